"""seqzoo: a zoo of efficient sequence-model architectures (Triton kernels exact on CPU, HF-native models).

``import seqzoo`` registers every architecture with AutoConfig / AutoModel / AutoModelForCausalLM /
AutoModelForSequenceClassification (and the byte tokenizer with AutoTokenizer).
"""

__version__ = "0.1.0"

from .architectures import get_config_class, list_architectures, make_config  # noqa: E402  (registers them)
from .tokenizer import ByteTokenizer  # noqa: E402

__all__ = ["ByteTokenizer", "get_config_class", "list_architectures", "make_config", "__version__"]
