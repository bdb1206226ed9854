"""The C version of one Spark-FFN token after the predictor (``spark_ffn_step.c``, built by
:mod:`seqzoo.kernels._native`): threshold, survivors, their value dots and the weighted sum of their output
rows in one call, in place of ~15 PyTorch ops."""

from __future__ import annotations

import ctypes

import torch

from .._native import library, pointer

_SOURCE = "sparse_ffn/spark_ffn_step.c"


def _function():
    lib = library(_SOURCE)
    if lib is None:
        return None
    fn = lib.spark_ffn_step
    if fn.restype is not ctypes.c_int64:
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return fn


def spark_ffn_step_native(s: torch.Tensor, xv: torch.Tensor, w_value: torch.Tensor, w_down: torch.Tensor,
                          z: float) -> torch.Tensor | None:
    """``o [Dm] = Σ_{i: s_i > θ} gelu_tanh(s_i - θ) · (w_value[i] · xv) · w_down[i]`` with
    ``θ = mean(s) + std(s) · z`` (population std): the soft statistical top-k, GELU and ``sparse_ffn`` of one
    token. ``s [F]``, ``xv [Dv]``, ``w_value [F, Dv]``, ``w_down [F, Dm]``: contiguous fp32 CPU tensors.

    Returns None (the caller runs its PyTorch ops) when the C kernel is unavailable or the inputs are not of
    that kind."""
    tensors = (s, xv, w_value, w_down)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
        return None
    F_, Dv = w_value.shape
    if s.shape != (F_,) or xv.shape != (Dv,) or w_down.dim() != 2 or w_down.shape[0] != F_:
        return None
    fn = _function()
    if fn is None:
        return None
    out = torch.empty(w_down.shape[1], dtype=torch.float32)
    fn(pointer(s), F_, float(z), pointer(xv), pointer(w_value), Dv, pointer(w_down), w_down.shape[1], pointer(out))
    return out
