"""seqzoo: a zoo of efficient sequence-model architectures (Triton kernels exact on CPU, HF-native models).

``import seqzoo`` registers every architecture with AutoConfig / AutoModel / AutoModelForCausalLM /
AutoModelForSequenceClassification (and the byte tokenizer with AutoTokenizer).
"""

__version__ = "0.1.0"

from .architectures import list_architectures  # noqa: E402  (registers the architectures)
from .tokenizer import ByteTokenizer  # noqa: E402

__all__ = ["ByteTokenizer", "list_architectures", "__version__"]
