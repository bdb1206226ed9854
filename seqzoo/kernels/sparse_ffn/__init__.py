"""``sparse_ffn``: the second half of a Spark-FFN for decoding: only the neurons that survived the predictor's
top-k are computed (their rows of the value projection and of the down projection).

Shapes: ``a [..., F]`` (predictor activations, zero off the survivors), ``x [..., Dv]`` (the value branch's
input), ``w_value [F, Dv]``, ``w_down [F, Dm]``; returns ``o [..., Dm]`` in x's dtype, accumulated in fp32.
"""

from __future__ import annotations

import torch

from .._backend import check_same_device, check_same_dtype, check_tensor, resolve_backend
from .reference import sparse_ffn_reference
from .torch_gather import sparse_ffn_torch, survivors

OP = "sparse_ffn"


def sparse_ffn(a: torch.Tensor, x: torch.Tensor, w_value: torch.Tensor, w_down: torch.Tensor, *,
               backend: str = "auto") -> torch.Tensor:
    """``o = W_downᵀ (a ⊙ W_value x)``, computed on the nonzero entries of ``a`` only.

    Equal (up to fp32 summation order) to the dense computation with zeros; the gradient with respect to
    ``a`` is taken on its nonzero entries (the zeros are structural, as after ``relu(x - θ)``).

    Args:
        a: ``[..., F]`` predictor activations after top-k.
        x: ``[..., Dv]`` (same leading dims as a) the value branch's input.
        w_value: ``[F, Dv]``: row i is neuron i's value weights (an ``nn.Linear(Dv, F)`` weight).
        w_down: ``[F, Dm]``: row i is neuron i's output direction (the transpose of an ``nn.Linear(F, Dm)``
            weight, stored this way so that a neuron's weights are one contiguous row).
        backend: ``"auto" | "triton" | "torch" | "reference"``; the torch path gathers rows (CPU decoding),
            the Triton kernels read only the selected rows (GPU), the reference is the dense computation.
    """
    check_tensor(OP, "a", a)
    check_tensor(OP, "x", x)
    if a.dim() < 1 or x.dim() != a.dim() or tuple(a.shape[:-1]) != tuple(x.shape[:-1]):
        raise ValueError(f"{OP}: a [..., F] and x [..., Dv] must share their leading dims, got a "
                         f"{list(a.shape)} and x {list(x.shape)}")
    F_, Dv = a.shape[-1], x.shape[-1]
    check_tensor(OP, "w_value", w_value, shape=(F_, Dv), layout="[F, Dv] (F from a, Dv from x)")
    check_tensor(OP, "w_down", w_down, shape=(F_, None), layout="[F, Dm] (F from a)")
    check_same_dtype(OP, x=x, w_value=w_value, w_down=w_down)
    check_same_device(OP, a=a, x=x, w_value=w_value, w_down=w_down)
    backend = resolve_backend(backend, x.device, OP)
    lead = a.shape[:-1]
    a2, x2 = a.reshape(-1, F_), x.reshape(-1, Dv)  # [N, F], [N, Dv]
    if backend == "reference":
        o = sparse_ffn_reference(a2, x2, w_value, w_down)
    elif backend == "torch":
        o = sparse_ffn_torch(a2, x2, w_value, w_down)
    else:
        from .triton_gather import sparse_ffn_triton

        o = sparse_ffn_triton(a2, x2, w_value, w_down)
    return o.reshape(*lead, w_down.shape[1])


__all__ = ["sparse_ffn", "sparse_ffn_reference", "sparse_ffn_torch", "survivors"]
