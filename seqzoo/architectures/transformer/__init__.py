from ..base import register_architecture
from .configuration_transformer import TransformerConfig
from .modeling_transformer import (
    Attention,
    TransformerForCausalLM,
    TransformerForSequenceClassification,
    TransformerModel,
)

register_architecture(TransformerConfig, TransformerModel, TransformerForCausalLM, TransformerForSequenceClassification)

__all__ = [
    "Attention", "TransformerConfig", "TransformerModel", "TransformerForCausalLM", "TransformerForSequenceClassification",
]
