"""Layers shared by every architecture: RMSNorm, the dense FFNs, rotary embeddings, a short causal depthwise conv."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import rms_norm
from .spec import FFNSettings, register_ffn


class RMSNorm(nn.Module):
    """RMSNorm over the last dim through ``seqzoo.kernels.rms_norm`` (Triton on GPU, torch on CPU).
    ``forward(x, gate=None)``: with a gate, ``norm(x) * weight * silu(gate)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, gate=gate, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@dataclass
class MLPSettings(FFNSettings):
    intermediate_size: int | None = None  # FFN width; None: the model's intermediate_size (or its default)

    def validate(self, where: str) -> None:
        self.require_positive(where, "intermediate_size")


class MLP(nn.Module):
    """The dense FFNs: "swiglu" (silu-gated), "geglu" (gelu-gated), "glu" (bilinear, no activation on the gate,
    TransNormerLLM's SGLU) and "mlp" (up -> gelu -> down). Each is a registered FFN type (subclasses below)."""

    kind = "swiglu"

    def __init__(self, config, layer_idx: int, settings: MLPSettings):
        super().__init__()
        hidden = config.hidden_size
        inner = settings.intermediate_size or config.default_intermediate_size(self.kind)
        if self.kind != "mlp":
            self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)
        if self.kind == "mlp":
            return self.down_proj(F.gelu(up))
        gate = self.gate_proj(x)
        if self.kind == "swiglu":
            gate = F.silu(gate)
        elif self.kind == "geglu":
            gate = F.gelu(gate)
        return self.down_proj(gate * up)


@register_ffn("swiglu", settings=MLPSettings)
class SwiGLU(MLP):
    kind = "swiglu"


@register_ffn("geglu", settings=MLPSettings)
class GeGLU(MLP):
    kind = "geglu"


@register_ffn("glu", settings=MLPSettings)
class GLU(MLP):
    kind = "glu"


@register_ffn("mlp", settings=MLPSettings)
class PlainMLP(MLP):
    kind = "mlp"


GATE_BIAS_INIT = 1.28  # silu(1.28) = 1.00: an output gate starts open


class GateProjection(nn.Linear):
    """The pre-activation of an output gate ``RMSNorm(o) * silu(W_g x + b)``, with ``b`` initialised to
    ``bias_init`` (default 1.28, where silu = 1). With a zero bias the gate starts at silu(W_g x) ~ 0.5 W_g x,
    about 0.08 at width 64 with std 0.02 weights, which scales the mixer's output and its gradient down ~12x
    and stalled small models at chance; starting open makes the gate's scale independent of the width."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = GATE_BIAS_INIT):
        super().__init__(in_features, out_features, bias=True)
        self.bias_init = bias_init
        with torch.no_grad():
            self.bias.fill_(bias_init)

    def zoo_init_weights(self, init) -> None:  # called by ZooPreTrainedModel._init_weights after the Linear init
        init.constant_(self.bias, self.bias_init)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half form) computed from explicit ``position_ids``, so cached decoding,
    left padding and packed sequences all get the right angles. Not a buffer in the checkpoint."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RotaryEmbedding: head dim must be even, got {dim}")
        self.dim, self.theta = dim, theta

    def forward(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor):
        # q, k: [B, T, H, D]; position_ids: [B, T]. The frequencies are recomputed (D/2 numbers) rather than
        # kept as a buffer, so loading a checkpoint (meta-device init) can never leave them unset.
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=q.device) / self.dim))
        freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # [B, T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]  # [B, T, 1, D]
        cos, sin = emb.cos(), emb.sin()
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class ShortConvolution(nn.Module):
    """Causal depthwise conv over time with a short kernel (4 in DeltaNet / Mamba), then an activation.

    ``forward(x [B, T, C], state=None, cu_seqlens=None, mask=None) -> (y [B, T, C], new_state [B, C, K-1])``.
    ``state`` holds the last K-1 inputs of each sequence (zeros at the start); with it, running the sequence
    in pieces (prefix, then one token at a time) equals running it whole. ``cu_seqlens`` (B = 1) keeps packed
    sequences apart. ``mask`` ([B, T], 1 = token) zeroes padded inputs so pads never leak into the state.
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: str | None = "silu", bias: bool = False):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"ShortConvolution: kernel_size must be >= 1, got {kernel_size}")
        self.channels, self.kernel_size, self.activation = channels, kernel_size, activation
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def empty_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        return torch.zeros(batch_size, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(self, x, state=None, cu_seqlens=None, mask=None):
        B, T, C = x.shape
        if mask is not None:
            x = x * mask[:, -T:, None].to(x.dtype)
        xt = x.transpose(1, 2)  # [B, C, T]
        if state is None:
            state = self.empty_state(B, x.device, x.dtype)
        padded = torch.cat([state.to(x.dtype), xt], dim=-1)  # [B, C, K-1+T]
        new_state = padded[..., padded.shape[-1] - (self.kernel_size - 1):] if self.kernel_size > 1 else state
        if cu_seqlens is None:
            y = F.conv1d(padded, self.weight[:, None, :], self.bias, groups=C)  # [B, C, T]
        else:
            # packed sequences: tap j at time t reads x[t - (K-1-j)], only if it lies in t's own sequence
            seq_id = torch.bucketize(torch.arange(T, device=x.device), cu_seqlens[1:].to(x.device), right=True)
            y = x.new_zeros(B, C, T) if self.bias is None else self.bias[None, :, None].expand(B, C, T).to(x.dtype)
            for j in range(self.kernel_size):
                shift = self.kernel_size - 1 - j
                src = padded[..., j: j + T]
                same = torch.ones(T, dtype=torch.bool, device=x.device)
                if shift > 0:
                    same[shift:] = seq_id[shift:] == seq_id[:-shift]
                    same[:shift] = False
                y = y + src * self.weight[None, :, j, None] * same.to(x.dtype)
        y = y.transpose(1, 2)  # [B, T, C]
        if self.activation == "silu":
            y = F.silu(y)
        elif self.activation is not None:
            raise ValueError(f"ShortConvolution: unknown activation {self.activation!r}; use 'silu' or None")
        return y, new_state
