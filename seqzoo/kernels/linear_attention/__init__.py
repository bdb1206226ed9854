"""Linear attention without a denominator, with an optional fixed per-head decay (TransNormer's
NormAttention core; TransNormerLLM's lightning attention when ``decay`` is given)."""

from __future__ import annotations

import math

import torch

from .._backend import (
    check_varlen,
    check_same_device,
    check_same_dtype,
    check_tensor,
    num_sequences,
    resolve_backend,
)

OP = "linear_attention"
MAX_TRITON_HEAD_DIM = 256

__all__ = ["linear_attention"]


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    decay: torch.Tensor | None = None,
    scale: float = 1.0,
    causal: bool = True,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``o_t = scale · S_tᵀ q_t`` with ``S_t = λ S_{t-1} + k_t v_tᵀ`` per head (no softmax, no denominator).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``. fp32, bf16 or fp16 (one dtype); any T ≥ 1; K, V need
            not be powers of two (the Triton backend takes K, V ≤ 256).
        decay: optional ``[H]`` per-head log-decay ``log λ_h`` (``λ = exp(decay)``, normally ≤ 0, e.g.
            TransNormerLLM's ``-slope_h``). A fixed constant: it gets no gradient. Only for ``causal=True``.
        scale: multiplies the output (1.0 as in TransNormer: no ``1/√d``).
        causal: ``False`` makes every query read the state after its whole sequence,
            ``o_t = scale · S_Tᵀ q_t`` with ``S_T = S_0 + Σ_t k_t v_tᵀ`` (for classification).
        initial_state: optional ``[N, H, K, V]`` with N = B, or the number of sequences in ``cu_seqlens``.
        output_final_state: also return the state after the last token, ``[N, H, K, V]`` fp32.
        cu_seqlens: optional ``[N + 1]`` int offsets of packed sequences (B must be 1); the same as running
            each sequence alone.
        cu_seqlens_cpu: optional host (CPU) copy of ``cu_seqlens``: then a packed call makes no device->host
            copy (without it, one small copy syncs). Dense inputs never sync.
        backend: ``"auto" | "triton" | "torch" | "reference"`` (see :mod:`seqzoo.kernels._backend`).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [N, H, K, V] fp32 or None)``. Gradients flow to q, k, v,
        initial_state and from the final state.
    """
    check_tensor(OP, "q", q, ndim=4, layout="[B, T, H, K]")
    B, T, H, K = q.shape
    check_tensor(OP, "k", k, shape=(B, T, H, K), layout="[B, T, H, K] (same as q)")
    check_tensor(OP, "v", v, shape=(B, T, H, None), layout="[B, T, H, V]")
    V = v.shape[-1]
    check_same_dtype(OP, q=q, k=k, v=v)
    if T < 1:
        raise ValueError(f"{OP}: q must have at least one token (T >= 1), got shape {list(q.shape)}")
    if K < 1 or V < 1 or H < 1:
        raise ValueError(f"{OP}: q and v need H, K, V >= 1, got q {list(q.shape)} and v {list(v.shape)}")
    if decay is not None:
        check_tensor(OP, "decay", decay, shape=(H,), layout="[H] (per-head log-decay)")
        if not causal:
            raise ValueError(
                f"{OP}: decay is only defined for causal=True (a decay over a non-causal sequence has no "
                "direction); pass decay=None with causal=False"
            )
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"{OP}: scale must be a finite float, got {scale!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    cu_host = check_varlen(OP, cu_seqlens, B, T, cu_seqlens_cpu)
    N = num_sequences(B, cu_seqlens)
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, shape=(N, H, K, V), layout="[N, H, K, V]")
    check_same_device(OP, q=q, k=k, v=v, decay=decay, initial_state=initial_state, cu_seqlens=cu_seqlens)
    backend = resolve_backend(backend, q.device, OP)
    kwargs = dict(decay=decay, scale=float(scale), causal=causal, initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if backend == "reference":
        from .reference import linear_attention_reference

        return linear_attention_reference(q, k, v, **kwargs)
    if backend == "torch":
        from .torch_chunk import linear_attention_torch

        return linear_attention_torch(q, k, v, **kwargs, cu_seqlens_cpu=cu_host)
    if K > MAX_TRITON_HEAD_DIM or V > MAX_TRITON_HEAD_DIM:
        raise ValueError(
            f"{OP}: backend='triton' supports head dims up to {MAX_TRITON_HEAD_DIM}, got K={K} (q) and V={V} (v); "
            "use backend='torch'"
        )
    from .triton_chunk import linear_attention_triton

    return linear_attention_triton(q, k, v, **kwargs, cu_seqlens_cpu=cu_host)
