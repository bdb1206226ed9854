from ..base import register_architecture
from .configuration_transnormer import PRESETS, TransNormerConfig
from .modeling_transnormer import (
    DiagAttention,
    NormAttention,
    TransNormerForCausalLM,
    TransNormerForSequenceClassification,
    TransNormerModel,
)

register_architecture(TransNormerConfig, TransNormerModel, TransNormerForCausalLM, TransNormerForSequenceClassification)

__all__ = [
    "DiagAttention", "NormAttention", "PRESETS", "TransNormerConfig", "TransNormerModel", "TransNormerForCausalLM",
    "TransNormerForSequenceClassification",
]
