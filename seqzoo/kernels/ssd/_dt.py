"""Δ from the raw ``dt``, with mamba_ssm's conventions (shared by every backend of ``ssd_scan``).

``Δ = dt + dt_bias``; then ``softplus`` (as mamba_ssm: the identity above 20, where softplus is exact to fp32
anyway) when ``dt_softplus``; then clamped to ``dt_limit`` when it is not the default ``(0, inf)`` (mamba_ssm's
Triton path clamps only then, so ``dt_softplus=False`` with a negative ``dt`` is passed through unclamped).
Computed in fp32 with plain autograd, so ``dt`` and ``dt_bias`` get their gradients from the backend's ``dΔ``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_LIMIT = (0.0, math.inf)


def discretize_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
                  dt_limit: tuple[float, float]) -> torch.Tensor:
    """``[B, T, H]`` raw dt -> ``[B, T, H]`` fp32 Δ (fp64 for fp64 input: the tests' ground truth)."""
    d = dt.to(torch.promote_types(dt.dtype, torch.float32))
    if dt_bias is not None:
        d = d + dt_bias.to(d.dtype)
    if dt_softplus:
        d = F.softplus(d, threshold=20.0)
    if tuple(dt_limit) != DEFAULT_LIMIT:
        d = d.clamp(min=dt_limit[0], max=dt_limit[1])
    return d
