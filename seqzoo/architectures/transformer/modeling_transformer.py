"""The Transformer baseline: causal softmax attention with rotary embeddings, as a seqzoo mixer.

``config._attn_implementation`` picks the kernel: ``"sdpa"`` (torch's scaled_dot_product_attention, the
default), ``"eager"`` (the readable fp32 softmax, the slow reference path) or ``"flash_attention_2"`` (the
flash-attn package: ``pip install 'seqzoo[flash]'``). Keys/values of earlier tokens live in the ZooCache.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import (
    MixerSettings,
    RotaryEmbedding,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    register_mixer,
)
from .configuration_transformer import TransformerConfig

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def require_flash_attn() -> None:
    if not flash_attn_available():
        raise ImportError(
            "attn_implementation='flash_attention_2' needs the flash-attn package, which is not installed; "
            "install seqzoo's 'flash' extra (pip install 'seqzoo[flash]') or use attn_implementation='sdpa'"
        )


def attention_allowed_mask(B, T, S, device, attention_mask=None, cu_seqlens=None):
    """Boolean [B or 1, 1, T, S]: query i (absolute position S - T + i) may attend key j. ``None`` when plain
    causal attention with no cache offset needs no mask at all."""
    offset = S - T
    if attention_mask is None and cu_seqlens is None and offset == 0:
        return None
    q_pos = offset + torch.arange(T, device=device)
    k_pos = torch.arange(S, device=device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, T, S] causal
    if cu_seqlens is not None:
        seq_id = torch.bucketize(k_pos, cu_seqlens.to(device)[1:], right=True)
        allowed = allowed & (seq_id[None, None, offset:, None] == seq_id[None, None, None, :])
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    # a query with no visible key (a left-pad position) would give NaN: let it see everything instead;
    # its output is never used
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def eager_attention(q, k, v, allowed, scale, dropout_p=0.0, training=False):
    """The readable path. q [B, T, H, D], k/v [B, S, H, D] (heads already repeated) -> [B, T, H, D]."""
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale  # [B, H, T, S]
    if allowed is None:
        T, S = q.shape[1], k.shape[1]
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=training)
    return torch.einsum("bhts,bshd->bthd", probs, v.float()).to(q.dtype)


@dataclass
class AttentionSettings(MixerSettings):
    num_kv_heads: int | None = None  # grouped-query attention: key/value heads; None: as many as num_heads
    rope_theta: float = 10000.0  # rotary base
    dropout: float = 0.0  # dropout on the attention weights (training only)

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "num_kv_heads", "rope_theta")
        if not 0.0 <= self.dropout < 1.0:
            raise self.invalid(where, "dropout", "a probability in [0, 1)")
        heads = self.num_heads
        if heads is not None and self.num_kv_heads is not None and heads % self.num_kv_heads:
            raise self.invalid(where, "num_kv_heads", f"a divisor of num_heads ({heads})")


@register_mixer("attention", settings=AttentionSettings)
class Attention(nn.Module):
    def __init__(self, config, layer_idx: int, settings: AttentionSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        self.num_heads = settings.num_heads
        self.num_kv_heads = settings.num_kv_heads or settings.num_heads  # divides num_heads (validated)
        self.head_dim = settings.head_dim
        self.scale = self.head_dim**-0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, theta=settings.rope_theta)

    @staticmethod
    def state_size(config, settings) -> int:
        return 0  # the KV cache grows with T: no fixed-size state

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)  # [B, T, H, D]
        k = self.k_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)  # [B, T, Hkv, D]
        v = self.v_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        if position_ids is None:
            offset = cache.seen_tokens if cache is not None else 0
            position_ids = (offset + torch.arange(T, device=q.device))[None].expand(B, T)
        q, k = self.rotary(q, k, position_ids)
        if cache is not None:
            k = cache.append(self.layer_idx, "k", k, dim=1)  # [B, S, Hkv, D]
            v = cache.append(self.layer_idx, "v", v, dim=1)
        impl = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if impl not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {impl!r}")
        dropout = self.settings.dropout if self.training else 0.0
        if impl == "flash_attention_2" and attention_mask is None:
            o = self._flash(q, k, v, cu_seqlens, dropout)
        else:
            S = k.shape[1]
            if self.num_kv_heads != self.num_heads:
                rep = self.num_heads // self.num_kv_heads
                k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
            allowed = attention_allowed_mask(B, T, S, q.device, attention_mask, cu_seqlens)
            if impl == "eager":
                o = eager_attention(q, k, v, allowed, self.scale, dropout, self.training)
            else:  # sdpa; also flash_attention_2 with padding (flash-attn has no padded-batch mask)
                o = F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [B, H, T|S, D]
                    attn_mask=allowed, dropout_p=dropout, is_causal=allowed is None and T > 1, scale=self.scale,
                ).transpose(1, 2)  # [B, T, H, D]
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim))

    def _flash(self, q, k, v, cu_seqlens, dropout):
        require_flash_attn()
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        if cu_seqlens is None:  # causal mask aligned bottom-right: right for a cache offset too
            return flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=self.scale, causal=True)
        cu = cu_seqlens.to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        o = flash_attn_varlen_func(
            q[0], k[0], v[0], cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=self.scale, causal=True
        )
        return o[None]


class TransformerModel(ZooModel):
    config_class = TransformerConfig


class TransformerPreTrainedMixin:
    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        if attn_implementation == "flash_attention_2":
            require_flash_attn()  # name our extra, before transformers' generic message
        return super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)


class TransformerForCausalLM(TransformerPreTrainedMixin, ZooForCausalLM):
    config_class = TransformerConfig


class TransformerForSequenceClassification(TransformerPreTrainedMixin, ZooForSequenceClassification):
    config_class = TransformerConfig
