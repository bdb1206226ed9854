"""MEGA's moving-average gated attention (``mega`` mixer), its normalized FFN (``mega_ffn``), and the thin
model classes. TCNCA (``seqzoo.architectures.tcnca``) is the same block with the EMA replaced by a dilated
TCN: both subclass :class:`GatedAttention`, which owns everything but the long-range context op.

The block (Ma et al., ICLR 2023, arXiv 2209.10655; ``moving_average_gated_attention.py``), input x̂ [B, T, D]:

    1. v  = SiLU(W_v x̂)                                        [B, T, h]   values
    2. x' = SiLU(ctx(x̂) + ω ⊙ x̂)                              [B, T, D]   MEGA: damped EMA; TCNCA: TCN
    3. W x' -> u (sigmoid: update gate), z, r (SiLU: shared z, reset gate), h_x
    4. q = z·γ₀ + β₀,  k = z·γ₁ + β₁                            [B, T, z]   per-dim affine of the shared z
    5. O = f(q kᵀ) v inside chunks of ``chunk_size`` tokens, causal or not: ``softmax(q kᵀ / √z)`` through the
       ``block_attention`` kernel, or MEGA's ``laplace(q kᵀ / n)`` (n = the keys the query sees;
       ``laplace(x) = ½(1 + erf((x − √½) / (σ√2)))``, σ = √(1/4π)) in plain torch (:func:`laplace_blocks`)
    6. H = SiLU(h_x + W_h (O ⊙ r))
    7. out = u ⊙ (H − x̂)          (the Block adds x: MEGA's x + u ⊙ (H − x))

Relative positions: rotary on q and k (MEGA's LM uses a rotary-style relative bias on learned vectors;
rotary on q/k gives the same translation invariance and works through the ``block_attention`` kernel).
The one deviation to note: MEGA's gated residual uses the un-normalized x in ``H − x``; here the Block owns
the residual and the mixer sees the normalized x̂.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...kernels import block_attention, ema
from ...kernels._chunk import pack_varlen, pad_time, seq_lens, unpack_varlen
from ...kernels.ema import ema_step, mega_ema_coefficients
from ..base import (
    FFNSettings,
    MixerSettings,
    RotaryEmbedding,
    ZooForCausalLM,
    ZooForSequenceClassification,
    ZooModel,
    padding,
    register_ffn,
    register_mixer,
)
from ..base.chunked import attend_in_blocks
from .configuration_mega import MegaConfig

KERNEL_BACKENDS = ("auto", "triton", "torch", "reference")
EMA_BACKENDS = ("auto", "fft", "scan", "reference")
ATTENTIONS = ("softmax", "laplace")
LAPLACE_MU, LAPLACE_SIGMA = math.sqrt(0.5), math.sqrt(1.0 / (4.0 * math.pi))
MAX_V_PER_CALL = 256  # block_attention's Triton kernel takes value dims up to 256: wider v runs in groups


@dataclass
class GatedAttentionSettings(MixerSettings):
    z_dim: int | None = None  # shared q/k dim z; None: hidden_size // 4, at least 16 (MEGA: 64-128)
    v_dim: int | None = None  # value / attention output dim ("hidden"); None: 2 * hidden_size (MEGA's ratio)
    chunk_size: int = 128  # attention inside chunks of this many tokens; 0 = full attention
    attention: str = "softmax"  # softmax (block_attention kernel) | laplace (MEGA's LRA image/path configs)
    rotary: bool = True  # rotary positions on q, k (relative positions inside the chunk)
    rope_theta: float = 10000.0
    causal: bool = True  # False: bidirectional context and attention (classification); no generation then
    kernel_backend: str = "auto"  # block_attention (and dilated_conv) backend: auto | triton | torch | reference

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "z_dim", "v_dim", "rope_theta")
        if self.chunk_size < 0:
            raise self.invalid(where, "chunk_size", "0 (full attention) or a positive chunk length")
        self.require_choice(where, "kernel_backend", KERNEL_BACKENDS)
        self.require_choice(where, "attention", ATTENTIONS)


def laplace_blocks(q, k, v, block_size: int, causal: bool, cu_seqlens=None):
    """MEGA's laplace attention inside blocks of ``block_size`` tokens, in plain torch (fp32):
    ``o_i = Σ_j laplace(q_i·k_j / n_i) v_j`` over the keys ``j`` of the query's block (``j ≤ i`` if causal),
    ``n_i`` their count. q, k: ``[B, T, H, D]``, v: ``[B, T, H, Dv]``; ``cu_seqlens`` packs sequences (B = 1).
    O(T·w) memory, as ``block_attention``'s torch path."""
    B, T, H, D = q.shape
    w = block_size
    qf, kf, vf = q.float(), k.float(), v.float()
    if cu_seqlens is None:
        qf, kf, vf = (pad_time(x, w) for x in (qf, kf, vf))
        lengths = torch.full((B,), T, dtype=torch.long, device=q.device)
    else:
        qf, kf, vf = (unpack_varlen(x, cu_seqlens, multiple=w) for x in (qf, kf, vf))  # [N, Tp, H, *]
        lengths = seq_lens(cu_seqlens).long()
    N, Tp = qf.shape[:2]
    nb = Tp // w
    qb, kb = (x.view(N, nb, w, H, D).permute(0, 3, 1, 2, 4) for x in (qf, kf))  # [N, H, nb, w, D]
    vb = vf.view(N, nb, w, H, -1).permute(0, 3, 1, 2, 4)
    pos = torch.arange(w, device=q.device)
    real = torch.arange(Tp, device=q.device).view(nb, w)[None] < lengths[:, None, None]  # [N, nb, w]
    visible = real[:, None, :, None, :]  # [N, 1, nb, 1, w]: keys that exist
    if causal:
        visible = visible & (pos[:, None] >= pos[None, :])
    n = visible.sum(-1, keepdim=True).clamp(min=1)  # keys each query sees
    s = (qb @ kb.transpose(-1, -2)) / n  # [N, H, nb, w, w]
    p = 0.5 * (1.0 + torch.erf((s - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0)))) * visible
    o = (p @ vb).permute(0, 2, 3, 1, 4).reshape(N, Tp, H, -1)
    o = o[:, :T] if cu_seqlens is None else pack_varlen(o, cu_seqlens)
    return o.to(q.dtype)


@dataclass
class MegaSettings(GatedAttentionSettings):
    ndim: int = 16  # EMA expansion N: decaying states per channel (16 in every released MEGA config)
    ema_backend: str = "auto"  # seqzoo.kernels.ema path: auto (= fft, as MEGA) | fft | scan | reference

    def validate(self, where: str) -> None:
        super().validate(where)
        self.require_positive(where, "ndim")
        self.require_choice(where, "ema_backend", EMA_BACKENDS)


def _no_generation(settings, cache, name):
    if cache is not None and not settings.causal:
        raise ValueError(f"{name}: a bidirectional model (causal=False) cannot decode with a cache; use causal=True")


class GatedAttention(nn.Module):
    """Steps 1 and 3-7 of the module docstring; subclasses provide step 2's context op (``_context``) and
    its state (``context_state_size``)."""

    def __init__(self, config, layer_idx: int, settings: GatedAttentionSettings):
        super().__init__()
        self.config, self.layer_idx, self.settings = config, layer_idx, settings
        D = config.hidden_size
        self.z_dim = settings.z_dim or max(16, D // 4)
        self.v_dim = settings.v_dim or 2 * D
        self.v_proj = nn.Linear(D, self.v_dim)
        self.mx_proj = nn.Linear(D, D + self.z_dim + self.v_dim + D)  # -> u, z, r, h_x (in that order)
        self.h_proj = nn.Linear(self.v_dim, D)
        self.qk_gamma = nn.Parameter(torch.empty(2, self.z_dim))  # per-dim affine: q = z γ0 + β0, k = z γ1 + β1
        self.qk_beta = nn.Parameter(torch.zeros(2, self.z_dim))
        self.omega = nn.Parameter(torch.empty(D))  # x' = SiLU(ctx(x) + ω ⊙ x)
        self.rotary = RotaryEmbedding(self.z_dim, theta=settings.rope_theta) if settings.rotary else None
        self._init_gated()

    def _init_gated(self):
        with torch.no_grad():
            self.qk_gamma.normal_(0.0, 0.02)  # MEGA's initialisation
            self.qk_beta.zero_()
            self.omega.normal_(0.0, 1.0)

    def zoo_init_weights(self, init) -> None:  # called by ZooPreTrainedModel._init_weights
        init.normal_(self.qk_gamma, mean=0.0, std=0.02)
        init.zeros_(self.qk_beta)
        init.normal_(self.omega, mean=0.0, std=1.0)
        self.init_context(init)

    def _attend(self, q, k, v, cu_seqlens):
        w = self.settings.chunk_size or q.shape[1]  # full attention: one block over the whole input
        if self.settings.attention == "laplace":
            return laplace_blocks(q, k, v, w, self.settings.causal, cu_seqlens)
        groups = [v] if v.shape[-1] <= MAX_V_PER_CALL else list(v.split(MAX_V_PER_CALL, dim=-1))
        outs = [block_attention(q, k, g.contiguous(), block_size=w, causal=self.settings.causal,
                                scale=self.z_dim ** -0.5, cu_seqlens=cu_seqlens,
                                backend=self.settings.kernel_backend) for g in groups]
        return outs[0] if len(outs) == 1 else torch.cat(outs, -1)

    def forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None, position_ids=None):
        _no_generation(self.settings, cache, type(self).__name__)
        B, T, D = hidden_states.shape
        x = hidden_states
        mask = attention_mask[:, -T:] if attention_mask is not None else None  # [B, T] 1 = token
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)  # pads never reach the context op's state
        state = cache[self.layer_idx] if cache is not None else None
        v = F.silu(self.v_proj(x))  # [B, T, h]
        mx = F.silu(self._context(x, mask, state, cu_seqlens) + x * self.omega)  # [B, T, D]
        base = self.mx_proj(mx)
        u, zr, hx = base.split([D, self.z_dim + self.v_dim, D], dim=-1)
        u = torch.sigmoid(u)
        z, r = F.silu(zr).split([self.z_dim, self.v_dim], dim=-1)
        qk = z[:, :, None, :] * self.qk_gamma + self.qk_beta  # [B, T, 2, z]
        q, k = qk[:, :, :1], qk[:, :, 1:]  # [B, T, 1, z] each: one head
        if self.rotary is not None:
            if position_ids is None:
                offset = cache.seen_tokens if cache is not None else 0
                position_ids = (offset + torch.arange(T, device=x.device))[None].expand(B, T)
            q, k = self.rotary(q, k, position_ids)
        w = self.settings.chunk_size or None
        attn_state = None
        if state is not None:
            attn_state = state.setdefault("attention", {})
        o = attend_in_blocks(self._attend, q.contiguous(), k.contiguous(), v[:, :, None, :].contiguous(), w,
                             attention_mask=mask, state=attn_state, cu_seqlens=cu_seqlens)  # [B, T, 1, h]
        h = F.silu(hx + self.h_proj(o[:, :, 0] * r))
        return u * (h - hidden_states)

    # context op: subclasses
    def _context(self, x, mask, state, cu_seqlens):
        raise TypeError(f"{type(self).__name__} must define its context op (_context)")

    def init_context(self, init) -> None:
        """(Re)initialise the context op's parameters (subclasses)."""


@register_mixer("mega", settings=MegaSettings)
class MegaMixer(GatedAttention):
    """MEGA: the context op is the multi-dimensional damped EMA (``seqzoo.kernels.ema``), bidirectional when
    ``causal=False`` (a second set of EMA parameters runs from the end of the sequence)."""

    def __init__(self, config, layer_idx: int, settings: MegaSettings):
        super().__init__(config, layer_idx, settings)
        D, N = config.hidden_size, settings.ndim
        dirs = 1 if settings.causal else 2
        # MEGA's names: p = sigmoid(delta) weighs the input, sigmoid(alpha) damps, beta expands, gamma projects
        self.ema_delta = nn.Parameter(torch.empty(dirs, D, N))
        self.ema_alpha = nn.Parameter(torch.empty(dirs, D, N))
        self.ema_beta = nn.Parameter(torch.empty(dirs, D, N))
        self.ema_gamma = nn.Parameter(torch.empty(dirs, D, N))
        with torch.no_grad():
            self._init_ema(lambda p, v: p.copy_(v))

    def _init_ema(self, copy):
        """MEGA: delta, alpha ~ N(0, 0.2); beta ~ N(0, 0.02) + (1, -1, 1, -1, ...); gamma ~ N(0, 1)."""
        shape = self.ema_delta.shape
        sign = torch.ones(shape[-1])
        sign[1::2] = -1.0
        copy(self.ema_delta, 0.2 * torch.randn(shape))
        copy(self.ema_alpha, 0.2 * torch.randn(shape))
        copy(self.ema_beta, 0.02 * torch.randn(shape) + sign)
        copy(self.ema_gamma, torch.randn(shape))

    def init_context(self, init) -> None:
        self._init_ema(lambda p, v: init.copy_(p, v.to(p.device, p.dtype)))

    @staticmethod
    def state_size(config, settings) -> int:
        z = settings.z_dim or max(16, config.hidden_size // 4)
        h = settings.v_dim or 2 * config.hidden_size
        chunk = settings.chunk_size or config.max_position_embeddings
        return config.hidden_size * settings.ndim + chunk * (z + h)  # EMA state + one chunk of k, v

    def _coefficients(self):
        a, b, c = mega_ema_coefficients(self.ema_delta, self.ema_alpha, self.ema_beta, self.ema_gamma)
        return (a, b, c) if not self.settings.causal else (a[0], b[0], c[0])

    def _context(self, x, mask, state, cu_seqlens):
        a, b, c = self._coefficients()
        kw = dict(backend=self.settings.ema_backend)
        if state is None:
            packed = padding.pack(mask) if mask is not None and cu_seqlens is None else None
            xs = packed.pack(x) if packed is not None else x
            y, _ = ema(xs, a, b, c, bidirectional=not self.settings.causal,
                       cu_seqlens=packed.cu_seqlens if packed is not None else cu_seqlens, **kw)
            return packed.unpack(y) if packed is not None else y
        B, T, D = x.shape
        prev = state.get("ema")
        if prev is None:
            prev = x.new_zeros(B, D, a.shape[-1], dtype=torch.float32)
        if T == 1 and mask is None:
            y, state["ema"] = ema_step(x[:, 0], a, b, c, prev)
            return y[:, None]
        packed = padding.pack(mask if mask is not None else torch.ones(B, T, device=x.device))
        y, final = ema(packed.pack(x), a, b, c, initial_state=prev, output_final_state=True,
                       cu_seqlens=packed.cu_seqlens, **kw)
        state["ema"] = final  # [B, D, N] fp32; a row whose new tokens are all pads keeps its state
        return packed.unpack(y)


@dataclass
class MegaFFNSettings(FFNSettings):
    intermediate_size: int | None = None  # None: the model's intermediate_size, else 2 * hidden_size (MEGA)

    def validate(self, where: str) -> None:
        self.require_positive(where, "intermediate_size")


@register_ffn("mega_ffn", settings=MegaFFNSettings)
class MegaFFN(nn.Module):
    """MEGA's normalized FFN: ``fc2(SiLU(fc1(norm(x))))`` with biases; the Block provides the pre-norm and the
    residual, so this module is the two projections."""

    def __init__(self, config, layer_idx: int, settings: MegaFFNSettings):
        super().__init__()
        width = settings.intermediate_size or config.intermediate_size or 2 * config.hidden_size
        self.fc1 = nn.Linear(config.hidden_size, width)
        self.fc2 = nn.Linear(width, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(F.silu(self.fc1(hidden_states)))


class MegaModel(ZooModel):
    config_class = MegaConfig


class MegaForCausalLM(ZooForCausalLM):
    config_class = MegaConfig


class MegaForSequenceClassification(ZooForSequenceClassification):
    config_class = MegaConfig
