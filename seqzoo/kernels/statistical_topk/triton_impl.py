"""Statistical top-k as one fused Triton row kernel: forward and backward in one ``torch.autograd.Function``.

Forward, one program per row of length d (any d: the row is visited in blocks of ``BLOCK`` columns):
  pass 1  the statistics. Each block gives its count, mean and centred sum of squares M2 (exact inside the
          block); blocks are merged with Chan's parallel update, so a row whose mean is large next to its
          spread loses no precision (a plain sum / sum-of-squares would).
              μ, σ = sqrt(max(M2 / d, TINY)),  θ = μ + z·σ
  pass 2  the output: relu(x - θ) (soft) or x where x ≥ θ else -inf (hard). θ, μ and c = z / (d·σ) (0 when
          the variance was clamped) are stored per row for the backward.
Backward, with m_j = [x_j - θ > 0] and g the incoming gradient:
  soft  pass 1: S = Σ_j g_j m_j;  pass 2: dx_j = g_j m_j - S / d - S · c · (x_j - μ)
        (θ depends on x through μ and σ: dθ/dx_j = 1/d + z (x_j - μ) / (d σ))
  hard  dx_j = g_j [x_j ≥ θ]: the output equals x on survivors, and the selection is a step function of x,
        so this is the exact gradient wherever it exists (everywhere except rows with an entry at θ).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreter_active, next_power_of_2
from .reference import TINY_VAR

MAX_BLOCK = 4096


@triton.jit
def _row_stats(X, row, d, BLOCK: tl.constexpr):
    """Mean and population variance of row ``row`` of X (fp32), blockwise with Chan's merge."""
    cols = tl.arange(0, BLOCK)
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for c0 in range(0, d, BLOCK):
        mask = (c0 + cols) < d
        x = tl.load(X + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        n_b = tl.minimum(d - c0, BLOCK).to(tl.float32)
        mean_b = tl.sum(x, axis=0) / n_b
        diff = tl.where(mask, x - mean_b, 0.0)
        m2_b = tl.sum(diff * diff, axis=0)
        n_new = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n_new)
        m2 = m2 + m2_b + delta * delta * (n * n_b / n_new)
        n = n_new
    return mean, m2 / d


@triton.jit
def _fwd(X, Y, THETA, MU, C, d, z, tiny, HARD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    mean, var = _row_stats(X, row, d, BLOCK)
    sigma = tl.sqrt(tl.maximum(var, tiny))
    theta = mean + z * sigma
    tl.store(THETA + row, theta)
    tl.store(MU + row, mean)
    tl.store(C + row, tl.where(var >= tiny, z / (d * sigma), 0.0))
    cols = tl.arange(0, BLOCK)
    for c0 in range(0, d, BLOCK):
        mask = (c0 + cols) < d
        x = tl.load(X + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
        if HARD:
            y = tl.where(x >= theta, x, float("-inf"))
        else:
            y = tl.maximum(x - theta, 0.0)
        tl.store(Y + row * d + c0 + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd(X, DY, DX, THETA, MU, C, d, HARD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    theta = tl.load(THETA + row)
    cols = tl.arange(0, BLOCK)
    if HARD:
        for c0 in range(0, d, BLOCK):
            mask = (c0 + cols) < d
            x = tl.load(X + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(DY + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            dx = tl.where(x >= theta, g, 0.0)
            tl.store(DX + row * d + c0 + cols, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        mu = tl.load(MU + row)
        c = tl.load(C + row)
        s = 0.0
        for c0 in range(0, d, BLOCK):
            mask = (c0 + cols) < d
            x = tl.load(X + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(DY + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            s += tl.sum(tl.where(mask & ((x - theta) > 0.0), g, 0.0), axis=0)
        for c0 in range(0, d, BLOCK):
            mask = (c0 + cols) < d
            x = tl.load(X + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(DY + row * d + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            dx = tl.where((x - theta) > 0.0, g, 0.0) - s / d - s * c * (x - mu)
            tl.store(DX + row * d + c0 + cols, dx.to(DX.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


class _StatisticalTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, hard, block):
        shape = x.shape
        d = shape[-1]
        x2 = x.reshape(-1, d).contiguous()  # [M, d]
        M = x2.shape[0]
        y = torch.empty_like(x2)
        theta, mu, c = (torch.empty(M, device=x.device, dtype=torch.float32) for _ in range(3))
        if M > 0:
            _fwd[(M,)](x2, y, theta, mu, c, d, z, TINY_VAR, HARD=hard, BLOCK=block, num_warps=_num_warps(block))
        ctx.save_for_backward(x2, theta, mu, c)
        ctx.hard, ctx.block, ctx.shape = hard, block, shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, theta, mu, c = ctx.saved_tensors
        M, d = x2.shape
        dy2 = dy.reshape(M, d).contiguous()
        dx = torch.empty_like(x2)
        if M > 0:
            _bwd[(M,)](x2, dy2, dx, theta, mu, c, d, HARD=ctx.hard, BLOCK=ctx.block,
                       num_warps=_num_warps(ctx.block))
        return dx.reshape(ctx.shape), None, None, None


def statistical_topk_triton(x: torch.Tensor, z: float, mode: str = "soft", block_size: int | None = None):
    """``block_size`` (a power of two) caps the columns one step of the row loop reads; the default is the
    row length rounded up to a power of two, at most 4096. Tests set it small to exercise the loop."""
    if not (x.is_cuda or interpreter_active()):
        raise ValueError("statistical_topk: the triton backend needs CUDA tensors or TRITON_INTERPRET=1")
    block = block_size or min(next_power_of_2(x.shape[-1]), MAX_BLOCK)
    return _StatisticalTopK.apply(x, float(z), mode == "hard", block)
