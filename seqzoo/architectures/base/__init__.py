"""The shared backbone every architecture plugs its layers into."""

from . import padding
from .block import Block
from .cache import ZooCache
from .configuration import ZooConfig
from .layers import GATE_BIAS_INIT, MLP, GateProjection, MLPSettings, RMSNorm, RotaryEmbedding, ShortConvolution
from .modeling import ZooForCausalLM, ZooForSequenceClassification, ZooModel, ZooPreTrainedModel
from .registry import get_config_class, list_architectures, make_config, register_architecture
from .spec import (
    FFNS,
    MIXERS,
    FFNSettings,
    LayerSettings,
    LayerSpec,
    MixerSettings,
    get_mixer,
    register_ffn,
    register_mixer,
)

__all__ = [
    "GATE_BIAS_INIT", "GateProjection", "Block", "ZooCache", "ZooConfig", "MLP", "MLPSettings", "RMSNorm", "RotaryEmbedding", "ShortConvolution",
    "FFNS", "MIXERS", "FFNSettings", "LayerSettings", "LayerSpec", "MixerSettings", "get_mixer", "register_ffn",
    "register_mixer", "padding", "ZooForCausalLM", "ZooForSequenceClassification", "ZooModel",
    "ZooPreTrainedModel", "get_config_class", "list_architectures", "make_config", "register_architecture",
]
