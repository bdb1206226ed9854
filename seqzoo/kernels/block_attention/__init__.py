"""Softmax (or ReLU) attention inside non-overlapping blocks of ``block_size`` tokens: TransNormer's
DiagAttention. O(T·w·d) time and memory; there is never a [T, T] mask."""

from __future__ import annotations

import math

import torch

from .._backend import (
    check_choice,
    check_varlen,
    check_same_device,
    check_same_dtype,
    check_tensor,
    resolve_backend,
)

OP = "block_attention"
ACTIVATIONS = ("softmax", "relu")
MAX_TRITON_HEAD_DIM = 256

__all__ = ["block_attention"]


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int = 64,
    causal: bool = True,
    activation: str = "softmax",
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention restricted to the block of ``block_size`` tokens that holds the query.

    Token ``t`` of a sequence is in block ``t // block_size`` (the last block may be shorter). With
    ``s_ij = scale · q_i·k_j`` over the keys ``j`` of the query's block (``j ≤ i`` when ``causal``):
    ``"softmax"``: ``o_i = Σ_j softmax_j(s_ij) v_j``; ``"relu"`` (ReLA): ``o_i = Σ_j relu(s_ij) v_j``, no
    normalization (TransNormer normalizes the layer output instead).

    Args:
        q, k: ``[B, T, H, D]``; v: ``[B, T, H, Dv]``; fp32, bf16 or fp16 (one dtype); any T ≥ 1.
        block_size: w ≥ 1, need not divide T (the last block is shorter).
        scale: defaults to ``D ** -0.5``.
        cu_seqlens: optional ``[N + 1]`` offsets of packed sequences (B = 1); blocks restart at every
            sequence start, so the result equals running each sequence alone.
        cu_seqlens_cpu: optional host (CPU) copy of ``cu_seqlens``: a packed call then makes no device->host
            copy (without it, one small copy syncs). Dense inputs never sync.
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``o``: ``[B, T, H, Dv]`` in q's dtype.
    """
    check_tensor(OP, "q", q, ndim=4, layout="[B, T, H, D]")
    B, T, H, D = q.shape
    check_tensor(OP, "k", k, shape=(B, T, H, D), layout="[B, T, H, D] (same as q)")
    check_tensor(OP, "v", v, shape=(B, T, H, None), layout="[B, T, H, Dv]")
    check_same_dtype(OP, q=q, k=k, v=v)
    if T < 1:
        raise ValueError(f"{OP}: q must have at least one token (T >= 1), got shape {list(q.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{OP}: block_size must be a positive int, got {block_size!r}")
    check_choice(OP, "activation", activation, ACTIVATIONS)
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"{OP}: scale must be None or a finite float, got {scale!r}")
    cu_host = check_varlen(OP, cu_seqlens, B, T, cu_seqlens_cpu)
    check_same_device(OP, q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    backend = resolve_backend(backend, q.device, OP)
    kwargs = dict(block_size=block_size, causal=causal, activation=activation,
                  scale=None if scale is None else float(scale), cu_seqlens=cu_seqlens)
    if backend == "reference":
        from .reference import block_attention_reference

        return block_attention_reference(q, k, v, **kwargs)
    if backend == "torch":
        from .torch_chunk import block_attention_torch

        return block_attention_torch(q, k, v, **kwargs, cu_seqlens_cpu=cu_host)
    if D > MAX_TRITON_HEAD_DIM or v.shape[-1] > MAX_TRITON_HEAD_DIM:
        raise ValueError(
            f"{OP}: backend='triton' supports head dims up to {MAX_TRITON_HEAD_DIM}, got D={D} (q) and "
            f"Dv={v.shape[-1]} (v); use backend='torch'"
        )
    from .triton_block import block_attention_triton

    return block_attention_triton(q, k, v, **kwargs, cu_seqlens_cpu=cu_host)
