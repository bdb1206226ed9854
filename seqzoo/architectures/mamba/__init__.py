"""Mamba (Mamba-1): the selective scan in mamba_ssm's block (arXiv 2312.00752); mixer ``mamba``, model_type
``zoo_mamba``."""

from ..base import register_architecture
from .configuration_mamba import ZooMambaConfig
from .modeling_mamba import (
    MambaMixer,
    MambaSettings,
    ZooMambaForCausalLM,
    ZooMambaForSequenceClassification,
    ZooMambaModel,
)

register_architecture(ZooMambaConfig, ZooMambaModel, ZooMambaForCausalLM, ZooMambaForSequenceClassification)

__all__ = [
    "ZooMambaConfig", "MambaMixer", "MambaSettings", "ZooMambaModel", "ZooMambaForCausalLM",
    "ZooMambaForSequenceClassification",
]
