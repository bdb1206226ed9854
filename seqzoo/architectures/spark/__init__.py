"""Spark Transformer (arXiv 2506.06644): mixer ``spark_attention``, FFN ``spark_ffn``; see README.md."""

from ..base import register_architecture
from .configuration_spark import SparkConfig
from .modeling_spark import (
    SparkAttention,
    SparkFFN,
    SparkForCausalLM,
    SparkForSequenceClassification,
    SparkModel,
    sparsity_report,
)

register_architecture(SparkConfig, SparkModel, SparkForCausalLM, SparkForSequenceClassification)

__all__ = [
    "SparkAttention", "SparkConfig", "SparkFFN", "SparkForCausalLM", "SparkForSequenceClassification", "SparkModel",
    "sparsity_report",
]
