"""The Mamba-2 mixer and its thin model classes (mamba_ssm's ``modules/mamba2.py``, arXiv 2405.21060).

Per layer, with H heads of size P (inner width d = H·P), G groups and state size N:

    z, xBC, dt = in_proj(x)                   one projection, split in this order: [d | d + 2GN | H]
    xBC        = SiLU(conv4(xBC))             causal depthwise conv (with bias) over x, B and C together
    x, B, C    = split(xBC)                   [B, T, H, P], [B, T, G, N], [B, T, G, N]
    y          = ssd_scan(x, dt, A, B, C, D, dt_bias, softplus)   seqzoo.kernels.ssd_scan, A = -exp(A_log)
    y          = RMSNorm_group(y ⊙ SiLU(z))   gated RMSNorm, normalized per group of d/G channels (eps 1e-5)
    out        = out_proj(y)

Initialisation as mamba_ssm: A_log = log U(1, 16), dt_bias = softplus⁻¹(dt) with dt log-uniform in
[1e-3, 0.1] (at least 1e-4), D = 1; these three are tagged ``_no_weight_decay`` as mamba_ssm does.

The cache keeps, per layer, the conv state (the last conv_size - 1 inputs of xBC) and the SSM state
``[B, H, P, N]`` (fp32), so decoding one token at a time continues the full forward exactly. Padding
(``attention_mask == 0``) writes nothing: the conv sees zeros at pads and the scan runs the real tokens packed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import ssd_scan
from ...kernels._backend import BACKENDS
from ..base import (
    MixerSettings,
    ShortConvolution,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    padding,
    register_mixer,
)
from .configuration_mamba2 import ZooMamba2Config


@dataclass
class Mamba2Settings(MixerSettings):
    state_size: int = 128  # N, the SSM state per head is [P, N]
    n_groups: int = 1  # G: B and C are shared by groups of num_heads / G heads (num_heads % G == 0)
    conv_size: int = 4  # depthwise causal conv over x, B, C
    chunk_size: int = 64  # chunk of the torch SSD path
    A_init_min: float = 1.0  # A_log = log U(A_init_min, A_init_max)
    A_init_max: float = 16.0
    dt_min: float = 0.001  # dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], >= dt_init_floor
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit_min: float = 0.0  # Δ clamped to [dt_limit_min, dt_limit_max]; (0, None) = no clamp
    dt_limit_max: float | None = None
    gated_norm_eps: float = 1e-5  # eps of the gated RMSNorm (mamba_ssm: 1e-5; the model's norm_eps is its own)
    kernel_backend: str = "auto"  # seqzoo.kernels.ssd_scan backend: auto | triton | torch | reference

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "state_size", "n_groups", "conv_size", "chunk_size")
        self.require_choice(where, "kernel_backend", BACKENDS)
        if not 0 < self.A_init_min <= self.A_init_max:
            raise self.invalid(where, "A_init_min", f"0 < A_init_min <= A_init_max = {self.A_init_max}")
        if not 0 < self.dt_min <= self.dt_max:
            raise self.invalid(where, "dt_min", f"0 < dt_min <= dt_max = {self.dt_max}")
        if self.dt_init_floor <= 0:
            raise self.invalid(where, "dt_init_floor", "a number > 0")
        if self.dt_limit_min < 0 or (self.dt_limit_max is not None and self.dt_limit_max <= self.dt_limit_min):
            raise self.invalid(where, "dt_limit_min", f"0 <= dt_limit_min < dt_limit_max = {self.dt_limit_max}")
        if self.num_heads is not None and self.num_heads % self.n_groups:
            raise self.invalid(where, "n_groups", f"a divisor of num_heads = {self.num_heads}")


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float, floor: float, device=None) -> torch.Tensor:
    """mamba_ssm's dt init: dt log-uniform in [dt_min, dt_max] (at least ``floor``), returned as softplus⁻¹(dt)."""
    dt = torch.exp(torch.rand(n, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def init_copy(init, param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy an init value through transformers' guarded init (skips weights loaded from a checkpoint)."""
    if hasattr(init, "copy_"):
        init.copy_(param, value.to(param.dtype))
    else:  # transformers without the initialization module
        with torch.no_grad():
            param.copy_(value)


@register_mixer("mamba2", settings=Mamba2Settings)
class Mamba2Mixer(nn.Module):
    no_weight_decay = ("A_log", "dt_bias", "D")  # seqzoo.optim.param_groups exempts these (mamba_ssm does)

    def __init__(self, config, layer_idx: int, settings: Mamba2Settings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        H, P, G, N = settings.num_heads, settings.head_dim, settings.n_groups, settings.state_size
        if H % G:
            raise ValueError(f"Mamba2Mixer (layer {layer_idx}): num_heads={H} must be a multiple of n_groups={G}")
        self.num_heads, self.head_dim, self.n_groups, self.state_dim = H, P, G, N
        self.inner = H * P
        conv_dim = self.inner + 2 * G * N
        self.in_proj = nn.Linear(config.hidden_size, self.inner + conv_dim + H, bias=False)  # [z | xBC | dt]
        self.conv = ShortConvolution(conv_dim, settings.conv_size, activation="silu", bias=True)
        self.A_log = nn.Parameter(torch.zeros(H))
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True  # mamba_ssm's tag: no weight decay on these
        self.norm_weight = nn.Parameter(torch.ones(self.inner))
        self.out_proj = nn.Linear(self.inner, config.hidden_size, bias=False)
        self.zoo_init_weights(torch.nn.init)

    def zoo_init_weights(self, init) -> None:  # called by ZooPreTrainedModel._init_weights
        s = self.settings
        H, dev = self.num_heads, self.A_log.device
        init_copy(init, self.A_log, torch.log(torch.empty(H, device=dev).uniform_(s.A_init_min, s.A_init_max)))
        init_copy(init, self.dt_bias, inverse_softplus_dt(H, s.dt_min, s.dt_max, s.dt_init_floor, dev))
        init.ones_(self.D)
        init.ones_(self.norm_weight)

    @staticmethod
    def state_size(config, settings) -> int:
        """Recurrent numbers per sequence: the H x P x N SSM state plus the conv buffer."""
        H, P, G, N = settings.num_heads, settings.head_dim, settings.n_groups, settings.state_size
        return H * P * N + (H * P + 2 * G * N) * (settings.conv_size - 1)

    def _gated_norm(self, y, z):
        """RMSNorm(y ⊙ SiLU(z)) over groups of inner / G channels, times a per-channel weight; in fp32."""
        B, T, _ = y.shape
        g = (y.float() * F.silu(z.float())).view(B, T, self.n_groups, -1)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.settings.gated_norm_eps)
        return (g.view(B, T, self.inner) * self.norm_weight.float()).to(y.dtype)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        B, T, _ = hidden_states.shape
        H, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.state_dim
        s = self.settings
        state = cache[self.layer_idx] if cache is not None else {}
        use_state = cache is not None
        mask = attention_mask[:, -T:] if attention_mask is not None else None  # [B, T] 1 = token

        z, xbc, dt = self.in_proj(hidden_states).split([self.inner, self.inner + 2 * G * N, H], dim=-1)
        xbc, conv_state = self.conv(xbc, state=state.get("conv") if use_state else None, cu_seqlens=cu_seqlens,
                                    mask=attention_mask)
        if use_state:
            state["conv"] = conv_state  # [B, inner + 2GN, conv_size - 1]
        x, Bm, Cm = xbc.split([self.inner, G * N, G * N], dim=-1)
        x = x.reshape(B, T, H, P)  # [B, T, H, P]
        Bm, Cm = Bm.reshape(B, T, G, N), Cm.reshape(B, T, G, N)  # [B, T, G, N]

        packed = padding.pack(mask) if mask is not None and cu_seqlens is None else None
        if packed is not None:  # padded batch: the real tokens as packed sequences, one per row
            x, dt, Bm, Cm = (packed.pack(t) for t in (x, dt, Bm, Cm))  # [1, N_tok, ...]
            cu_seqlens = packed.cu_seqlens
        limit = (s.dt_limit_min, math.inf if s.dt_limit_max is None else s.dt_limit_max)
        y, final = ssd_scan(x, dt, -torch.exp(self.A_log.float()), Bm, Cm, D=self.D, dt_bias=self.dt_bias,
                            dt_softplus=True, dt_limit=limit, chunk_size=s.chunk_size,
                            initial_state=state.get("ssm") if use_state else None, output_final_state=use_state,
                            cu_seqlens=cu_seqlens, backend=s.kernel_backend)
        if packed is not None:
            y = packed.unpack(y)  # [B, T, H, P], zeros at pads
        if use_state:
            state["ssm"] = final  # [B, H, P, N] fp32
        y = self._gated_norm(y.reshape(B, T, self.inner), z)
        return self.out_proj(y)


class ZooMamba2Model(ZooModel):
    config_class = ZooMamba2Config


class ZooMamba2ForCausalLM(ZooForCausalLM):
    config_class = ZooMamba2Config


class ZooMamba2ForSequenceClassification(ZooForSequenceClassification):
    config_class = ZooMamba2Config
