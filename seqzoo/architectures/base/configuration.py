"""ZooConfig: the fields every seqzoo architecture shares.

An architecture subclasses ZooConfig, sets ``model_type`` and ``default_mixer``, and adds its own fields in an
explicit ``__init__`` (keyword arguments with defaults, then ``super().__init__(**kwargs)``). The backbone
reads only the fields defined here; a mixer reads the fields it needs.

``mixer_pattern`` is the per-layer list of mixer names (see ``mixers.py``): ``None`` means every layer uses
``default_mixer``. A hybrid, e.g. DeltaNet with softmax attention in the last of every 4 layers, is just
``mixer_pattern=["deltanet", "deltanet", "deltanet", "attention"]``. (It is not called ``layer_types``:
transformers validates that name against its own list.)
"""

from __future__ import annotations

from transformers import PreTrainedConfig

MLP_TYPES = ("swiglu", "geglu", "glu", "mlp")
POOLINGS = ("mean", "last")


class ZooConfig(PreTrainedConfig):
    model_type = "seqzoo"  # overridden by every architecture; not registered itself
    default_mixer = "attention"  # mixer of every layer when mixer_pattern is None
    keys_to_ignore_at_inference = ["past_key_values"]
    # Fields are the typed keyword arguments of __init__ (the trainer validates YAML against them).


    def __init__(
        self,
        vocab_size: int = 259,  # the byte tokenizer's 256 bytes + pad/bos/eos
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_heads: int = 4,
        head_dim: int | None = None,  # None: hidden_size // num_heads
        intermediate_size: int | None = None,  # None: 8/3 * hidden for gated MLPs (4x otherwise), rounded to 32
        mlp_type: str = "swiglu",
        norm_eps: float = 1e-6,
        max_position_embeddings: int = 2048,  # only a default for rotary tables; T is not capped by it
        rope_theta: float = 10000.0,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        mixer_pattern: list[str] | None = None,
        classifier_pooling: str = "mean",  # sequence classification: "mean" over non-pad tokens or "last"
        classifier_dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = 256,
        bos_token_id: int | None = 257,
        eos_token_id: int | None = 258,
        use_cache: bool = True,
        **kwargs,
    ):
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim) if head_dim is not None else None
        self.intermediate_size = int(intermediate_size) if intermediate_size is not None else None
        self.mlp_type = mlp_type
        self.norm_eps = float(norm_eps)
        self.max_position_embeddings = int(max_position_embeddings)
        self.rope_theta = float(rope_theta)
        self.attention_dropout = float(attention_dropout)
        self.initializer_range = float(initializer_range)
        self.mixer_pattern = list(mixer_pattern) if mixer_pattern is not None else None
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = float(classifier_dropout)
        self.use_cache = use_cache
        kwargs.setdefault("auto_map", self._default_auto_map())
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.tie_word_embeddings = tie_word_embeddings
        self.validate_zoo()

    # ------------------------------------------------------------------------------------------
    def validate_zoo(self) -> None:
        """Checks with messages that name the field; architectures extend this for their own fields."""
        name = type(self).__name__
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{name}: {field} must be positive, got {getattr(self, field)}")
        if self.head_dim is None and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"{name}: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                "unless head_dim is given"
            )
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"{name}: mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(f"{name}: classifier_pooling must be one of {POOLINGS}, got {self.classifier_pooling!r}")
        if self.mixer_pattern is not None and len(self.mixer_pattern) != self.num_hidden_layers:
            raise ValueError(
                f"{name}: mixer_pattern has {len(self.mixer_pattern)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; give one mixer name per layer"
            )
        for token in ("pad_token_id", "bos_token_id", "eos_token_id"):
            tid = getattr(self, token, None)
            if isinstance(tid, int) and not 0 <= tid < self.vocab_size:
                raise ValueError(f"{name}: {token}={tid} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def resolved_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        ratio = 8 / 3 if self.mlp_type != "mlp" else 4
        return 32 * ((int(self.hidden_size * ratio) + 31) // 32)

    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer."""
        if self.mixer_pattern is None:
            return [self.default_mixer] * self.num_hidden_layers
        return list(self.mixer_pattern)

    # ------------------------------------------------------------------------------------------
    # trust_remote_code support: checkpoints carry auto_map entries that point at a tiny shim module
    # (written next to config.json by save_pretrained) which imports the classes from the installed seqzoo.
    REMOTE_MODULE = "seqzoo_remote"

    @classmethod
    def _arch_class_names(cls) -> dict[str, str]:
        return getattr(cls, "_auto_class_names", {})

    @classmethod
    def _default_auto_map(cls) -> dict[str, str]:
        return {auto: f"{cls.REMOTE_MODULE}.{name}" for auto, name in cls._arch_class_names().items()}

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        from .registry import write_remote_shim

        write_remote_shim(save_directory, type(self))
