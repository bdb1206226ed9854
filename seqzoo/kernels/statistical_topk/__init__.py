"""``statistical_topk``: keep about the top k of each row with one threshold computed from the row's mean and
standard deviation (Spark Transformer, arXiv 2506.06644), instead of sorting.

Shapes: ``x [..., d, ...]`` with the row along ``dim``; returns ``y`` like ``x``, in x's dtype. Statistics are
computed in fp32 for every input dtype.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from .._backend import check_choice, check_tensor, resolve_backend
from .reference import statistical_topk_reference
from .torch_impl import statistical_topk_torch

OP = "statistical_topk"
MODES = ("soft", "hard")


@torch.compiler.assume_constant_result  # a Python float of Python numbers: no graph break under torch.compile
def quantile_multiplier(k: float, d: int) -> float:
    """``z = Φ⁻¹(1 - k/d)``: the threshold sits z standard deviations above the mean (≈1.405 for 8% kept)."""
    return NormalDist().inv_cdf(1.0 - k / d)


def _resolve_k(k, fraction, d: int) -> float:
    if (k is None) == (fraction is None):
        raise ValueError(f"{OP}: pass exactly one of k (a count) and fraction (k/d), got k={k!r}, "
                         f"fraction={fraction!r}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k < d:
            raise ValueError(f"{OP}: k must be an int with 0 < k < d = {d} (the row length along dim), got {k!r}")
        return float(k)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"{OP}: fraction must be a float in (0, 1), got {fraction!r}")
    return float(fraction) * d


def statistical_topk(x: torch.Tensor, k: int | None = None, *, fraction: float | None = None,
                     mode: str = "soft", dim: int = -1, backend: str = "auto") -> torch.Tensor:
    """Statistical top-k along ``dim``: ``θ = mean(x) + std(x) · Φ⁻¹(1 - k/d)`` (population std), then

    - ``mode="soft"``: ``relu(x - θ)``: survivors shifted down by θ, the rest exactly 0; gradients flow
      through the mean and the std (the production form of transformers' Gemma-3n MLP).
    - ``mode="hard"``: ``x`` where ``x ≥ θ``, else ``-inf`` (for attention scores before a softmax); the
      gradient is the incoming gradient on survivors and 0 elsewhere (the selection is a step function).

    About ``k`` entries survive when the row is roughly Gaussian; the count is not exact (that is the point:
    no sort, two passes over the row). ``bench statistical_topk`` reports the deviation from ``torch.topk``.

    Args:
        x: fp32, bf16 or fp16, any shape with ``x.shape[dim] = d ≥ 2``.
        k: the target count, ``0 < k < d``; or ``fraction = k/d`` in (0, 1). Pass exactly one.
        mode: ``"soft"`` or ``"hard"``.
        dim: the row dimension.
        backend: ``"auto" | "triton" | "torch" | "reference"``.
    """
    check_tensor(OP, "x", x)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise ValueError(f"{OP}: dim must be an int in [-{x.dim()}, {x.dim()}) for x of shape {list(x.shape)}, "
                         f"got {dim!r}")
    if x.dim() == 0 or x.shape[dim] < 2:
        raise ValueError(f"{OP}: x needs at least 2 entries along dim={dim}, got shape {list(x.shape)}")
    check_choice(OP, "mode", mode, MODES)
    d = x.shape[dim]
    z = quantile_multiplier(_resolve_k(k, fraction, d), d)
    backend = resolve_backend(backend, x.device, OP)
    moved = dim not in (-1, x.dim() - 1)
    xr = x.movedim(dim, -1) if moved else x
    if backend == "reference":
        y = statistical_topk_reference(xr, z, mode)
    elif backend == "torch":
        y = statistical_topk_torch(xr, z, mode)
    else:
        from .triton_impl import statistical_topk_triton

        y = statistical_topk_triton(xr, z, mode)
    return y.movedim(-1, dim) if moved else y


def survivor_counts(y: torch.Tensor, mode: str = "soft", dim: int = -1) -> torch.Tensor:
    """How many entries of each row survived ``statistical_topk`` (``y > 0`` soft, ``y > -inf`` hard)."""
    kept = (y > 0) if mode == "soft" else torch.isfinite(y) | (y == math.inf)
    return kept.sum(dim=dim)


__all__ = ["statistical_topk", "quantile_multiplier", "survivor_counts", "statistical_topk_reference",
           "statistical_topk_torch"]
