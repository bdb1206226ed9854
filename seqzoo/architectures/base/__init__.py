"""The shared backbone every architecture plugs its mixer into."""

from .block import Block
from .cache import ZooCache
from .configuration import ZooConfig
from .layers import MLP, RMSNorm, RotaryEmbedding, ShortConvolution
from .mixers import MIXERS, get_mixer, register_mixer
from .modeling import ZooForCausalLM, ZooForSequenceClassification, ZooModel, ZooPreTrainedModel
from .registry import get_config_class, list_architectures, make_config, register_architecture

__all__ = [
    "Block", "ZooCache", "ZooConfig", "MLP", "RMSNorm", "RotaryEmbedding", "ShortConvolution", "MIXERS",
    "get_mixer", "register_mixer", "ZooForCausalLM", "ZooForSequenceClassification", "ZooModel",
    "ZooPreTrainedModel", "get_config_class", "list_architectures", "make_config", "register_architecture",
]
