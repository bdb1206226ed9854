"""The C version of one whole Spark-FFN token (``spark_ffn_step.c``, built by :mod:`seqzoo.kernels._native`):
the predictor's scores, the threshold, the survivors, their value dots and the weighted sum of their output
rows in one call, in place of ~15 PyTorch ops."""

from __future__ import annotations

import ctypes

import torch

from .._native import function

_SOURCE = "sparse_ffn/spark_ffn_step.c"
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_ARGS = [_PTR, _I64, _I64, _PTR, _I64, ctypes.c_double, _PTR, _PTR, _I64, _PTR, _I64]


def spark_ffn_step_native(x: torch.Tensor, w_pred: torch.Tensor, w_value: torch.Tensor, w_down: torch.Tensor,
                          z: float) -> torch.Tensor | None:
    """One token of a Spark-FFN: ``s = w_pred x[:r]``, ``θ = mean(s) + std(s) · z`` (population std), then
    ``o [Dm] = Σ_{i: s_i > θ} gelu_tanh(s_i - θ) · (w_value[i] · x[r:]) · w_down[i]``: the soft statistical top-k,
    GELU and ``sparse_ffn``. ``x [D]``, ``w_pred [F, r]``, ``w_value [F, D - r]``, ``w_down [F, Dm]``: contiguous
    fp32 CPU tensors. Uses ``torch.get_num_threads()`` threads when the library was built with OpenMP.

    Returns None (the caller runs its PyTorch ops) when the C kernel is unavailable or the inputs are not of
    that kind."""
    for t in (x, w_pred, w_value, w_down):
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            return None
    if x.dim() != 1 or w_pred.dim() != 2 or w_value.dim() != 2 or w_down.dim() != 2:
        return None
    (F_, r), D = w_pred.shape, x.shape[0]
    if w_value.shape != (F_, D - r) or w_down.shape[0] != F_:
        return None
    fn = function(_SOURCE, "spark_ffn_step", _ARGS)
    if fn is None:
        return None
    out = torch.empty(w_down.shape[1], dtype=torch.float32)
    kept = fn(x.data_ptr(), D, r, w_pred.data_ptr(), F_, z, w_value.data_ptr(), w_down.data_ptr(), w_down.shape[1],
              out.data_ptr(), torch.get_num_threads())
    if kept < 0:
        raise MemoryError(f"{_SOURCE}: could not allocate its buffers")
    return out
