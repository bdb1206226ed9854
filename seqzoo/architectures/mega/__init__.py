"""MEGA: moving-average gated attention (arXiv 2209.10655); mixer ``mega``, FFN ``mega_ffn``."""

from ..base import register_architecture
from .configuration_mega import SIZES, MegaConfig
from .modeling_mega import (
    GatedAttention,
    MegaFFN,
    MegaForCausalLM,
    MegaForSequenceClassification,
    MegaMixer,
    MegaModel,
)

register_architecture(MegaConfig, MegaModel, MegaForCausalLM, MegaForSequenceClassification)

__all__ = [
    "SIZES", "GatedAttention", "MegaConfig", "MegaFFN", "MegaMixer", "MegaModel", "MegaForCausalLM",
    "MegaForSequenceClassification",
]
