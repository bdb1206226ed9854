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

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import delta_rule
from ...kernels._backend import resolve_backend
from ...kernels.delta_rule import fused_recurrent_delta_rule
from ..base import RMSNorm, ShortConvolution, ZooForCausalLM, ZooForSequenceClassification, ZooModel, register_mixer
from ..transformer import modeling_transformer  # noqa: F401  (registers the "attention" mixer for hybrids)
from .configuration_deltanet import DeltaNetConfig


@register_mixer("deltanet")
class DeltaNetMixer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads = config.num_heads
        self.head_dim = config.resolved_head_dim
        hidden, inner = config.hidden_size, config.num_heads * config.resolved_head_dim
        self.use_short_conv = getattr(config, "use_short_conv", True)
        self.allow_neg_eigval = getattr(config, "allow_neg_eigval", False)
        self.use_output_gate = getattr(config, "use_output_gate", True)
        self.q_proj = nn.Linear(hidden, inner, bias=False)
        self.k_proj = nn.Linear(hidden, inner, bias=False)
        self.v_proj = nn.Linear(hidden, inner, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
        if self.use_short_conv:
            size = getattr(config, "conv_size", 4)
            self.q_conv = ShortConvolution(inner, size, activation="silu")
            self.k_conv = ShortConvolution(inner, size, activation="silu")
            self.v_conv = ShortConvolution(inner, size, activation="silu")
        if self.use_output_gate:
            self.g_proj = nn.Linear(hidden, inner, bias=False)
        self.o_norm = RMSNorm(self.head_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(inner, hidden, bias=False)

    @staticmethod
    def state_size(config) -> int:
        """Recurrent numbers per sequence: the H x D x D delta-rule state plus the conv buffers."""
        H, D = config.num_heads, config.resolved_head_dim
        conv = 3 * H * D * (config.conv_size - 1) if getattr(config, "use_short_conv", True) else 0
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
        if mask is not None:
            beta = beta * mask[..., None].to(beta.dtype)  # padding writes nothing into the state

        initial = state.get("state") if use_state else None
        backend = resolve_backend(getattr(self.config, "kernel_backend", "auto"), q.device, "DeltaNetMixer")
        kwargs = dict(initial_state=initial, output_final_state=use_state, cu_seqlens=cu_seqlens, use_qk_l2norm=True)
        if backend == "triton" and T <= getattr(self.config, "recurrent_max_len", 64):
            # decoding / short inputs: token-by-token kernel (routes to the chunked one if gradients are needed)
            o, final = fused_recurrent_delta_rule(q, k, v, beta, **kwargs)
        else:
            o, final = delta_rule(q, k, v, beta, backend=backend, **kwargs)  # o: [B, T, H, D]
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
