"""DeltaNet: linear attention with the delta rule (arXiv 2406.06484); mixer ``deltanet``."""

from ..base import register_architecture
from .configuration_deltanet import DeltaNetConfig
from .modeling_deltanet import DeltaNetForCausalLM, DeltaNetForSequenceClassification, DeltaNetMixer, DeltaNetModel

register_architecture(DeltaNetConfig, DeltaNetModel, DeltaNetForCausalLM, DeltaNetForSequenceClassification)

__all__ = [
    "DeltaNetConfig", "DeltaNetMixer", "DeltaNetModel", "DeltaNetForCausalLM", "DeltaNetForSequenceClassification",
]
