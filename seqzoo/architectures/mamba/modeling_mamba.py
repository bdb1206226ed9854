"""The Mamba (Mamba-1) mixer and its thin model classes (mamba_ssm's ``modules/mamba_simple.py``,
arXiv 2312.00752).

Per layer, with D = expand · hidden channels, state size N and Δ rank R:

    x, z      = in_proj(h)                     one projection, split in this order: [D | D]
    x         = SiLU(conv4(x))                 causal depthwise conv (with bias)
    dt, B, C  = x_proj(x)                      split [R | N | N]  (B, C input-dependent: one group)
    delta     = dt_proj.weight · dt            [B, T, D]; dt_proj.bias is the scan's delta_bias
    y         = selective_scan(x, delta, A, B, C, D, z, delta_bias, softplus)    A = -exp(A_log)
    out       = out_proj(y)                    (y already gated: y ⊙ SiLU(z))

Initialisation as mamba_ssm: A_log = log(1..N) per channel (S4D-real), D = 1, dt_proj.bias = softplus⁻¹(dt) with
dt log-uniform in [1e-3, 0.1] (at least 1e-4), dt_proj.weight ~ U(±R^-0.5); A_log and D are tagged
``_no_weight_decay``.

The cache keeps, per layer, the conv state (the last conv_size - 1 inputs) and the SSM state ``[B, D, N]``
(fp32). Padding writes nothing: the conv sees zeros at pads and the scan runs the real tokens packed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...kernels import selective_scan
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
from ..mamba2.modeling_mamba2 import init_copy, inverse_softplus_dt
from .configuration_mamba import ZooMambaConfig


@dataclass
class MambaSettings(MixerSettings):
    """num_heads / head_dim (inherited) do not apply: the mixer is diagonal per channel."""

    expand: int = 2  # channels D = expand * hidden_size
    state_size: int = 16  # N, the SSM state per channel
    conv_size: int = 4  # depthwise causal conv over x
    dt_rank: int | None = None  # rank of the Δ projection; None: ceil(hidden_size / 16)
    dt_min: float = 0.001  # dt_proj.bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], >= dt_init_floor
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0  # dt_proj.weight ~ U(±dt_scale / sqrt(dt_rank))
    kernel_backend: str = "auto"  # seqzoo.kernels.selective_scan backend: auto | triton | torch | reference

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "expand", "state_size", "conv_size", "dt_rank", "dt_scale")
        self.require_choice(where, "kernel_backend", BACKENDS)
        if not 0 < self.dt_min <= self.dt_max:
            raise self.invalid(where, "dt_min", f"0 < dt_min <= dt_max = {self.dt_max}")
        if self.dt_init_floor <= 0:
            raise self.invalid(where, "dt_init_floor", "a number > 0")


@register_mixer("mamba", settings=MambaSettings)
class MambaMixer(nn.Module):
    no_weight_decay = ("A_log", "D")  # seqzoo.optim.param_groups exempts these (mamba_ssm does)

    def __init__(self, config, layer_idx: int, settings: MambaSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        hidden = config.hidden_size
        self.channels = settings.expand * hidden
        self.state_dim = settings.state_size
        self.dt_rank = settings.dt_rank or math.ceil(hidden / 16)
        D, N, R = self.channels, self.state_dim, self.dt_rank
        self.in_proj = nn.Linear(hidden, 2 * D, bias=False)  # [x | z]
        self.conv = ShortConvolution(D, settings.conv_size, activation="silu", bias=True)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)  # [dt | B | C]
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.zeros(D, N))
        self.D = nn.Parameter(torch.ones(D))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # mamba_ssm's tag: no weight decay on these
        self.out_proj = nn.Linear(D, hidden, bias=False)
        self.zoo_init_weights(torch.nn.init)

    def zoo_init_weights(self, init) -> None:  # called by ZooPreTrainedModel._init_weights (after the Linears)
        s = self.settings
        D, N, dev = self.channels, self.state_dim, self.A_log.device
        init_copy(init, self.A_log, torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=dev)).repeat(D, 1))
        init.ones_(self.D)
        bound = s.dt_scale * self.dt_rank ** -0.5
        init.uniform_(self.dt_proj.weight, -bound, bound)
        init_copy(init, self.dt_proj.bias, inverse_softplus_dt(D, s.dt_min, s.dt_max, s.dt_init_floor, dev))

    @staticmethod
    def state_size(config, settings) -> int:
        """Recurrent numbers per sequence: the D x N SSM state plus the conv buffer."""
        D = settings.expand * config.hidden_size
        return D * settings.state_size + D * (settings.conv_size - 1)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        B, T, _ = hidden_states.shape
        D, N, R = self.channels, self.state_dim, self.dt_rank
        state = cache[self.layer_idx] if cache is not None else {}
        use_state = cache is not None
        mask = attention_mask[:, -T:] if attention_mask is not None else None  # [B, T] 1 = token

        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # [B, T, D] each
        x, conv_state = self.conv(x, state=state.get("conv") if use_state else None, cu_seqlens=cu_seqlens,
                                  mask=attention_mask)
        if use_state:
            state["conv"] = conv_state  # [B, D, conv_size - 1]
        dt, Bm, Cm = self.x_proj(x).split([R, N, N], dim=-1)
        delta = dt @ self.dt_proj.weight.t()  # [B, T, D]; the bias is added (in fp32) by the scan
        Bm, Cm = Bm.unsqueeze(2), Cm.unsqueeze(2)  # [B, T, 1, N]: one group

        packed = padding.pack(mask) if mask is not None and cu_seqlens is None else None
        if packed is not None:  # padded batch: the real tokens as packed sequences, one per row
            x, delta, Bm, Cm, z = (packed.pack(t) for t in (x, delta, Bm, Cm, z))  # [1, N_tok, ...]
            cu_seqlens = packed.cu_seqlens
        y, final = selective_scan(x, delta, -torch.exp(self.A_log.float()), Bm, Cm, D=self.D, z=z,
                                  delta_bias=self.dt_proj.bias, delta_softplus=True,
                                  initial_state=state.get("ssm") if use_state else None,
                                  output_final_state=use_state, cu_seqlens=cu_seqlens,
                                  backend=self.settings.kernel_backend)
        if packed is not None:
            y = packed.unpack(y)  # [B, T, D], zeros at pads
        if use_state:
            state["ssm"] = final  # [B, D, N] fp32
        return self.out_proj(y)


class ZooMambaModel(ZooModel):
    config_class = ZooMambaConfig


class ZooMambaForCausalLM(ZooForCausalLM):
    config_class = ZooMambaConfig


class ZooMambaForSequenceClassification(ZooForSequenceClassification):
    config_class = ZooMambaConfig
