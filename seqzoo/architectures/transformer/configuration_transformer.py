"""TransformerConfig: the softmax-attention baseline (Transformer++: RMSNorm, rotary, SwiGLU, no biases).

Every layer is an ``attention`` mixer (settings: ``AttentionSettings`` in modeling_transformer.py) with the
model's FFN; ``num_kv_heads``, ``rope_theta`` and ``attention_dropout`` are forwarded to those settings.
"""

from __future__ import annotations

from ..base import ZooConfig


class TransformerConfig(ZooConfig):
    model_type = "transformer"
    default_mixer = "attention"

    def __init__(
        self,
        num_kv_heads: int | None = None,  # grouped-query attention; None: as many as num_heads
        rope_theta: float = 10000.0,  # rotary base
        attention_dropout: float = 0.0,  # dropout on the attention weights
        attn_implementation: str | None = None,  # "sdpa" (default), "eager" or "flash_attention_2"
        **kwargs,
    ):
        self.forward_settings("attention", dict(num_kv_heads=num_kv_heads, rope_theta=rope_theta,
                                                dropout=attention_dropout), {"dropout": "attention_dropout"})
        super().__init__(**kwargs)
        if attn_implementation is not None:
            self._attn_implementation = self.check_field("attn_implementation", attn_implementation)
