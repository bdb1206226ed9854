"""The C version of one Spark-Attention decoding step after the predictor scores (``decode_step.c``, built by
:mod:`seqzoo.kernels._native`): per row the threshold, the selection, the selected keys' other dims and
values and the weighted sum, in one call, in place of ~40 PyTorch ops (statistics, selection lists, gathers,
softmax)."""

from __future__ import annotations

import ctypes

import torch

from .._native import function

_SOURCE = "spark_attention/decode_step.c"
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_ARGS = [_PTR, _I64, _I64, _I64, _I64, ctypes.c_double, _I64, _PTR, _I64, _PTR, _I64, _I64, _PTR, _I64, _I64, _I64,
         ctypes.c_double, _PTR, _I64]


def _rows_ok(x: torch.Tensor) -> bool:
    """fp32 CPU ``[B, Hkv, T, E]`` whose rows are contiguous and follow each other (a cache view)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.stride(-1) == 1
            and x.stride(-2) == x.shape[-1])


def spark_attention_decode_native(s1: torch.Tensor, q2: torch.Tensor, k2: torch.Tensor, v: torch.Tensor, z: float,
                                  select_all: bool, scale: float) -> torch.Tensor | None:
    """``s1 [B, Hkv, G, T]`` fp32 scaled predictor scores, ``q2 [B, Hkv, G, D2]`` the query's other dims,
    ``k2 [B, Hkv, T, D2]`` and ``v [B, Hkv, T, Dv]`` cache views (rows contiguous) -> ``[B, Hkv, G, Dv]`` fp32,
    or None (the caller runs its PyTorch ops) when the C kernel is unavailable or the inputs are not of that
    kind. ``z`` is the threshold's multiplier for T keys; ``select_all`` takes every key (T <= top_k). Uses
    ``torch.get_num_threads()`` threads (one row of keys each at most) when the library was built with OpenMP."""
    if s1.device.type != "cpu" or s1.dtype != torch.float32 or q2.dtype != torch.float32:
        return None
    if not (_rows_ok(k2) and _rows_ok(v)):
        return None
    fn = function(_SOURCE, "spark_attention_decode_step", _ARGS)
    if fn is None:
        return None
    B, Hkv, G, T = s1.shape
    D2 = k2.shape[-1]
    if q2.shape != (B, Hkv, G, D2) or k2.shape[:3] != (B, Hkv, T) or v.shape[:3] != (B, Hkv, T):
        return None
    s1, q2 = s1.contiguous(), q2.contiguous()
    out = torch.empty(B, Hkv, G, v.shape[-1], dtype=torch.float32)
    kept = fn(s1.data_ptr(), B, Hkv, G, T, z, int(select_all), q2.data_ptr(), D2, k2.data_ptr(), k2.stride(0),
              k2.stride(1), v.data_ptr(), v.stride(0), v.stride(1), v.shape[-1], scale, out.data_ptr(),
              torch.get_num_threads())
    if kept < 0:
        raise MemoryError(f"{_SOURCE}: could not allocate its index buffer")
    return out
