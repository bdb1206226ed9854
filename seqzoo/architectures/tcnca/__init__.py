"""TCNCA: MEGA's gated chunked attention with a dilated TCN instead of the EMA (arXiv 2312.05605); mixer
``tcnca``."""

from ..base import register_architecture
from ..mega import MegaFFN  # noqa: F401  (registers the mega_ffn FFN the presets use)
from .configuration_tcnca import TcncaConfig
from .modeling_tcnca import TcncaForCausalLM, TcncaForSequenceClassification, TcncaMixer, TcncaModel

register_architecture(TcncaConfig, TcncaModel, TcncaForCausalLM, TcncaForSequenceClassification)

__all__ = ["TcncaConfig", "TcncaMixer", "TcncaModel", "TcncaForCausalLM", "TcncaForSequenceClassification"]
