"""TransNormer's two mixers, NormAttention and DiagAttention, and the thin model classes.

NormAttention (``norm_attention``): linear attention without the softmax denominator and without ``1/√d``,
normalized afterwards:  ``O = RMSNorm(φ(Q) φ(K)ᵀ V)`` (causal: a running state ``S_t = λ S_{t-1} + φ(k_t) v_tᵀ``,
λ = 1 unless ``use_decay``), optionally gated ``RMSNorm(O) · silu(W_g x)``. Kernel: ``seqzoo.kernels.linear_attention``.
Generation keeps ``S`` ([B, H, D, D], fp32) in the cache.

DiagAttention (``diag_attention``): softmax (or ReLA: ReLU, unnormalized) attention inside non-overlapping blocks
of ``block_size`` tokens; block ``b`` holds the positions ``[b·w, (b+1)·w)`` of each sequence (positions count
real tokens, so padding does not shift blocks). Kernel: ``seqzoo.kernels.block_attention``. Generation keeps the
keys/values of the current, unfinished block in the cache ([B, w, H, D] buffers and a count per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import block_attention, linear_attention
from ..base import (
    GATE_BIAS_INIT,
    GateProjection,
    MixerSettings,
    RMSNorm,
    RotaryEmbedding,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    padding,
    register_mixer,
)
from ..base.chunked import attend_in_blocks
from .configuration_transnormer import TransNormerConfig

FEATURE_MAPS = ("elu", "1+elu", "identity")
DIAG_ACTIVATIONS = ("softmax", "relu")


@dataclass
class NormAttentionSettings(MixerSettings):
    feature_map: str = "1+elu"  # phi on q and k: "elu" (T1), "1+elu" (T2) or "identity"
    use_decay: bool = False  # TransNormerLLM: S_t = lambda_h S_{t-1} + k_t v_t^T with fixed, depth-scaled lambda_h
    use_output_gate: bool = False  # output RMSNorm(o) * silu(W_g x + b) (TransNormerLLM); False: RMSNorm(o)
    gate_bias_init: float = GATE_BIAS_INIT  # b at init: 1.28 (silu = 1) starts the gate open at every width
    causal: bool = True  # False: bidirectional (classification); no generation then

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_choice(where, "feature_map", FEATURE_MAPS)


@dataclass
class DiagAttentionSettings(MixerSettings):
    block_size: int = 64  # w: attention inside non-overlapping blocks of w tokens (paper ablation: 32/64/128)
    activation: str = "softmax"  # "softmax" (T2) or "relu" (ReLA, T1: relu(scale q.k), unnormalized)
    rotary: bool = True  # rotary positions on q, k (paper: none stated; order only through the causal mask)
    rope_theta: float = 10000.0  # rotary base
    causal: bool = True  # False: bidirectional inside each block; no generation then

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "block_size", "rope_theta")
        self.require_choice(where, "activation", DIAG_ACTIVATIONS)


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "elu":
        return F.elu(x)
    if kind == "1+elu":
        return 1.0 + F.elu(x)
    return x  # "identity"


def decay_rates(num_heads: int, layer_idx: int, num_layers: int, device=None) -> torch.Tensor:
    """TransNormerLLM's fixed decay as ``log λ_h`` ([H]): ALiBi slopes ``2^{-8(h+1)/H}`` scaled by
    ``1 - l/(L-1) + 1e-5``, so early layers forget fast and the last layer barely at all."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    slopes = torch.exp2(-8.0 * (h + 1) / num_heads)
    depth = 1.0 - layer_idx / max(num_layers - 1, 1) + 1e-5
    return -slopes * depth


def _no_generation(settings, cache, name):
    if cache is not None and not settings.causal:
        raise ValueError(f"{name}: a bidirectional model (causal=False) cannot decode with a cache; use causal=True")


@register_mixer("norm_attention", settings=NormAttentionSettings)
class NormAttention(nn.Module):
    def __init__(self, config, layer_idx: int, settings: NormAttentionSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        self.num_heads, self.head_dim = settings.num_heads, settings.head_dim
        hidden, inner = config.hidden_size, settings.num_heads * settings.head_dim
        self.q_proj = nn.Linear(hidden, inner, bias=False)
        self.k_proj = nn.Linear(hidden, inner, bias=False)
        self.v_proj = nn.Linear(hidden, inner, bias=False)
        self.g_proj = GateProjection(hidden, inner, settings.gate_bias_init) if settings.use_output_gate else None
        self.out_norm = RMSNorm(inner, eps=config.norm_eps)  # the "Norm" in NormAttention
        self.o_proj = nn.Linear(inner, hidden, bias=False)

    @staticmethod
    def state_size(config, settings) -> int:
        return settings.num_heads * settings.head_dim**2  # S: [H, D, D]

    def decay(self, device):
        if not self.settings.use_decay:
            return None
        return decay_rates(self.num_heads, self.layer_idx, self.config.num_hidden_layers, device)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        _no_generation(self.settings, cache, "NormAttention")
        if cache is not None and cu_seqlens is not None:
            raise ValueError("NormAttention: cu_seqlens (packed sequences) cannot be combined with a cache")
        B, T, _ = hidden_states.shape
        shape = (B, T, self.num_heads, self.head_dim)
        fmap = self.settings.feature_map
        q = feature_map(self.q_proj(hidden_states), fmap).view(shape)  # [B, T, H, D]
        k = feature_map(self.k_proj(hidden_states), fmap).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        packed = padding.pack(attention_mask[:, -T:]) if attention_mask is not None else None
        if packed is not None:  # padded batch: the real tokens as packed sequences, one per row
            q, k, v = (packed.pack(x) for x in (q, k, v))  # [1, N, H, D]
            cu_seqlens = packed.cu_seqlens
        state = cache[self.layer_idx].get("state") if cache is not None else None
        o, final = linear_attention(
            q, k, v, decay=self.decay(q.device), scale=1.0, causal=self.settings.causal, initial_state=state,
            output_final_state=cache is not None, cu_seqlens=cu_seqlens,
        )  # o: [B, T, H, D]
        if packed is not None:
            o = packed.unpack(o)  # [B, T, H, D], zeros at pads
        if cache is not None:
            cache[self.layer_idx]["state"] = final  # [B, H, D, D] fp32
        o = o.reshape(B, T, -1)
        gate = self.g_proj(hidden_states) if self.g_proj is not None else None
        return self.o_proj(self.out_norm(o, gate=gate))


@register_mixer("diag_attention", settings=DiagAttentionSettings)
class DiagAttention(nn.Module):
    def __init__(self, config, layer_idx: int, settings: DiagAttentionSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        self.num_heads, self.head_dim = settings.num_heads, settings.head_dim
        self.block_size = settings.block_size
        hidden, inner = config.hidden_size, settings.num_heads * settings.head_dim
        self.q_proj = nn.Linear(hidden, inner, bias=False)
        self.k_proj = nn.Linear(hidden, inner, bias=False)
        self.v_proj = nn.Linear(hidden, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, theta=settings.rope_theta) if settings.rotary else None

    @staticmethod
    def state_size(config, settings) -> int:
        return 2 * settings.block_size * settings.num_heads * settings.head_dim  # k, v of one block

    def _attend(self, q, k, v, cu_seqlens=None):
        return block_attention(q, k, v, block_size=self.block_size, causal=self.settings.causal,
                               activation=self.settings.activation, cu_seqlens=cu_seqlens)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        _no_generation(self.settings, cache, "DiagAttention")
        if cache is not None and cu_seqlens is not None:
            raise ValueError("DiagAttention: cu_seqlens (packed sequences) cannot be combined with a cache")
        B, T, _ = hidden_states.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape)  # [B, T, H, D]
        k = self.k_proj(hidden_states).view(shape)
        v = self.v_proj(hidden_states).view(shape)
        if self.rotary is not None:
            if position_ids is None:
                offset = cache.seen_tokens if cache is not None else 0
                position_ids = (offset + torch.arange(T, device=q.device))[None].expand(B, T)
            q, k = self.rotary(q, k, position_ids)
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        state = cache[self.layer_idx] if cache is not None else None
        o = attend_in_blocks(self._attend, q, k, v, self.block_size, attention_mask=mask, state=state,
                             cu_seqlens=cu_seqlens)  # [B, T, H, D]
        return self.o_proj(o.reshape(B, T, -1))


class TransNormerModel(ZooModel):
    config_class = TransNormerConfig


class TransNormerForCausalLM(ZooForCausalLM):
    config_class = TransNormerConfig


class TransNormerForSequenceClassification(ZooForSequenceClassification):
    config_class = TransNormerConfig
