"""The DeltaNet mixer and its thin model classes.

Per layer (arXiv 2406.06484, Sec. 3-4), with H heads of size D:

    q, k, v = W_q x, W_k x, W_v x                                   [B, T, H*D] each
    q, k, v = silu(conv4(q)), silu(conv4(k)), silu(conv4(v))       causal depthwise, kernel 4 (use_short_conv)
              (without the conv: q, k = silu(q), silu(k); v unchanged)
    q, k    = q / ||q||, k / ||k||                                 per head (keeps I - beta k k^T contractive)
    beta    = sigmoid(W_beta x)                                    [B, T, H]  (x2 with allow_neg_eigval)
    o       = delta_rule(q, k, v, beta)                            seqzoo.kernels.delta_rule
    o       = RMSNorm_D(o) * silu(W_g x)                           per head (use_output_gate), else RMSNorm only
    out     = W_o o

The cache keeps, per layer, the delta-rule state ``[B, H, D, D]`` (fp32) and the last ``conv_size - 1``
inputs of each conv, so decoding one token at a time continues the full forward exactly. Padding
(``attention_mask == 0``) writes nothing: its beta is zeroed and its conv inputs are zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import delta_rule
from ...kernels._backend import resolve_backend
from ...kernels.delta_rule import fused_recurrent_delta_rule
from ...kernels._backend import BACKENDS
from ..base import (
    GATE_BIAS_INIT,
    GateProjection,
    MixerSettings,
    RMSNorm,
    ShortConvolution,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    padding,
    register_mixer,
)
from .configuration_deltanet import DeltaNetConfig


@dataclass
class DeltaNetSettings(MixerSettings):
    use_short_conv: bool = True  # causal depthwise conv (+ SiLU) on q, k, v before the delta rule (paper: on)
    conv_size: int = 4  # its kernel length
    allow_neg_eigval: bool = False  # beta = 2 sigmoid(.) in (0, 2): I - beta k k^T may have negative eigenvalues
    use_output_gate: bool = True  # per-head output RMSNorm(o) * silu(W_g x + b); False: RMSNorm(o) only
    gate_bias_init: float = GATE_BIAS_INIT  # b at init: 1.28 (silu = 1) starts the gate open at every width
    kernel_backend: str = "auto"  # seqzoo.kernels.delta_rule backend: auto | triton | torch | reference
    recurrent_max_len: int = 64  # with Triton and no gradients, inputs up to this length use the recurrent kernel

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "conv_size")
        self.require_choice(where, "kernel_backend", BACKENDS)
        if self.recurrent_max_len < 0:
            raise self.invalid(where, "recurrent_max_len", "a number >= 0")


@register_mixer("deltanet", settings=DeltaNetSettings)
class DeltaNetMixer(nn.Module):
    def __init__(self, config, layer_idx: int, settings: DeltaNetSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        self.num_heads = settings.num_heads
        self.head_dim = settings.head_dim
        hidden, inner = config.hidden_size, settings.num_heads * settings.head_dim
        self.use_short_conv = settings.use_short_conv
        self.allow_neg_eigval = settings.allow_neg_eigval
        self.use_output_gate = settings.use_output_gate
        self.q_proj = nn.Linear(hidden, inner, bias=False)
        self.k_proj = nn.Linear(hidden, inner, bias=False)
        self.v_proj = nn.Linear(hidden, inner, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
        if self.use_short_conv:
            size = settings.conv_size
            self.q_conv = ShortConvolution(inner, size, activation="silu")
            self.k_conv = ShortConvolution(inner, size, activation="silu")
            self.v_conv = ShortConvolution(inner, size, activation="silu")
        if self.use_output_gate:
            self.g_proj = GateProjection(hidden, inner, settings.gate_bias_init)
        self.o_norm = RMSNorm(self.head_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(inner, hidden, bias=False)

    @staticmethod
    def state_size(config, settings) -> int:
        """Recurrent numbers per sequence: the H x D x D delta-rule state plus the conv buffers."""
        H, D = settings.num_heads, settings.head_dim
        conv = 3 * H * D * (settings.conv_size - 1) if settings.use_short_conv else 0
        return H * D * D + conv

    def _conv(self, name, x, state, cache_state, mask, cu_seqlens):
        conv = getattr(self, f"{name}_conv")
        y, new = conv(x, state=cache_state.get(f"conv_{name}") if state else None, cu_seqlens=cu_seqlens, mask=mask)
        if state:
            cache_state[f"conv_{name}"] = new
        return y

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        B, T, _ = hidden_states.shape
        H, D = self.num_heads, self.head_dim
        state = cache[self.layer_idx] if cache is not None else {}
        use_state = cache is not None
        mask = attention_mask[:, -T:] if attention_mask is not None else None  # [B, T] 1 = token

        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)  # [B, T, H*D]
        if self.use_short_conv:
            q = self._conv("q", q, use_state, state, attention_mask, cu_seqlens)
            k = self._conv("k", k, use_state, state, attention_mask, cu_seqlens)
            v = self._conv("v", v, use_state, state, attention_mask, cu_seqlens)
        else:
            q, k = F.silu(q), F.silu(k)
        q, k, v = (x.view(B, T, H, D) for x in (q, k, v))  # [B, T, H, D]
        beta = torch.sigmoid(self.b_proj(hidden_states).float())  # [B, T, H]
        if self.allow_neg_eigval:
            beta = 2.0 * beta

        initial = state.get("state") if use_state else None
        backend = resolve_backend(self.settings.kernel_backend, q.device, "DeltaNetMixer")
        packed = padding.pack(mask) if mask is not None and cu_seqlens is None else None
        if packed is not None:  # padded batch: run the real tokens as packed sequences, one per row
            q, k, v, beta = (packed.pack(x) for x in (q, k, v, beta))  # [1, N, ...]
            cu_seqlens = packed.cu_seqlens
        kwargs = dict(initial_state=initial, output_final_state=use_state, cu_seqlens=cu_seqlens, use_qk_l2norm=True)
        if backend == "triton" and T <= self.settings.recurrent_max_len:
            # decoding / short inputs: token-by-token kernel (routes to the chunked one if gradients are needed)
            o, final = fused_recurrent_delta_rule(q, k, v, beta, **kwargs)
        else:
            o, final = delta_rule(q, k, v, beta, backend=backend, **kwargs)  # o: [B, T, H, D]
        if packed is not None:
            o = packed.unpack(o)  # [B, T, H, D], zeros at pads
        if use_state:
            state["state"] = final  # [N, H, D, D] fp32

        gate = self.g_proj(hidden_states).view(B, T, H, D) if self.use_output_gate else None
        o = self.o_norm(o, gate=gate)  # per-head RMSNorm (x silu(gate))
        return self.o_proj(o.reshape(B, T, H * D))


class DeltaNetModel(ZooModel):
    config_class = DeltaNetConfig


class DeltaNetForCausalLM(ZooForCausalLM):
    config_class = DeltaNetConfig


class DeltaNetForSequenceClassification(ZooForSequenceClassification):
    config_class = DeltaNetConfig
