"""TransformerConfig: the softmax-attention baseline (Transformer++: RMSNorm, rotary, SwiGLU, no biases)."""

from __future__ import annotations

from ..base import ZooConfig


class TransformerConfig(ZooConfig):
    model_type = "transformer"
    default_mixer = "attention"

    def __init__(
        self,
        num_kv_heads: int | None = None,  # grouped-query attention; None: as many as num_heads
        attn_implementation: str | None = None,  # "sdpa" (default), "eager" or "flash_attention_2"
        **kwargs,
    ):
        self.num_kv_heads = int(num_kv_heads) if num_kv_heads is not None else None
        super().__init__(**kwargs)
        if attn_implementation is not None:
            self._attn_implementation = attn_implementation

    def validate_zoo(self) -> None:
        super().validate_zoo()
        if self.num_kv_heads is not None and (self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads):
            raise ValueError(
                f"TransformerConfig: num_kv_heads ({self.num_kv_heads}) must be positive and divide num_heads "
                f"({self.num_heads})"
            )
