"""``rms_norm``: RMS normalization over the last dim, optionally gated by ``silu(gate)``.

Shapes: ``x [..., D]``, ``weight [D]`` (or None), ``gate`` like ``x`` (or None); returns ``y`` like ``x``.
Statistics are computed in fp32 for every input dtype.
"""

from __future__ import annotations

import torch

from .._backend import check_same_device, check_tensor, resolve_backend
from .reference import rms_norm_reference
from .torch_impl import rms_norm_torch

OP = "rms_norm"


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, *, gate: torch.Tensor | None = None,
             eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    check_tensor(OP, "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{OP}: x must have a non-empty last dim [..., D], got shape {list(x.shape)}")
    D = x.shape[-1]
    if weight is not None:
        check_tensor(OP, "weight", weight, shape=(D,), layout="[D]")
    if gate is not None:
        check_tensor(OP, "gate", gate, shape=tuple(x.shape), layout="like x")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{OP}: eps must be a non-negative number, got {eps!r}")
    device = check_same_device(OP, x=x, weight=weight, gate=gate)
    backend = resolve_backend(backend, device, OP)
    if backend == "reference":
        return rms_norm_reference(x, weight, gate, eps)
    if backend == "torch":
        return rms_norm_torch(x, weight, gate, eps)
    from .triton_impl import rms_norm_triton

    return rms_norm_triton(x, weight, gate, eps)


__all__ = ["rms_norm", "rms_norm_reference", "rms_norm_torch"]
