"""Mamba-2: the SSD scan in mamba_ssm's block (arXiv 2405.21060); mixer ``mamba2``, model_type ``zoo_mamba2``."""

from ..base import register_architecture
from .configuration_mamba2 import ZooMamba2Config
from .modeling_mamba2 import (
    ZooMamba2ForCausalLM,
    ZooMamba2ForSequenceClassification,
    Mamba2Mixer,
    ZooMamba2Model,
    Mamba2Settings,
)

register_architecture(ZooMamba2Config, ZooMamba2Model, ZooMamba2ForCausalLM, ZooMamba2ForSequenceClassification)

__all__ = [
    "ZooMamba2Config", "Mamba2Mixer", "Mamba2Settings", "ZooMamba2Model", "ZooMamba2ForCausalLM",
    "ZooMamba2ForSequenceClassification",
]
