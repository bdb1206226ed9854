"""The delta rule (DeltaNet, arXiv 2406.06484): a linear-attention memory that overwrites instead of adds.

Per sequence and head, with the state ``S`` a ``[K, V]`` matrix (fp32):

    S_t = S_{t-1} + k_t (beta_t (v_t - S_{t-1}^T k_t))^T        o_t = S_t^T (scale * q_t)

Backends (``backend=``): ``"reference"`` the per-token loop (reference.py), ``"torch"`` the chunked WY
algorithm in PyTorch (torch_chunk.py, the CPU path), ``"triton"`` the chunked Triton kernels
(triton_chunk.py), ``"auto"`` Triton on CUDA and torch otherwise (see ``seqzoo.kernels._backend``).
:func:`fused_recurrent_delta_rule` is the token-by-token Triton kernel for decoding and short inputs.
"""

from __future__ import annotations

import torch

from .. import _backend as B
from .._chunk import l2_normalize

__all__ = ["delta_rule", "fused_recurrent_delta_rule"]

OP = "delta_rule"
MAX_TRITON_HEAD_DIM = 256


def _check(q, k, v, beta, scale, initial_state, cu_seqlens, cu_seqlens_cpu=None, op=OP):
    """Validate the inputs; returns ``(scale, host copy of cu_seqlens or None)``."""
    B.check_tensor(op, "q", q, ndim=4, layout="[B, T, H, K]")
    Bsz, T, H, K = q.shape
    B.check_tensor(op, "k", k, shape=(Bsz, T, H, K), layout="[B, T, H, K] (the shape of q)")
    B.check_tensor(op, "v", v, shape=(Bsz, T, H, None), layout="[B, T, H, V]")
    B.check_tensor(op, "beta", beta, shape=(Bsz, T, H), layout="[B, T, H]")
    B.check_same_dtype(op, q=q, k=k, v=v)
    B.check_same_device(op, q=q, k=k, v=v, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens)
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"{op}: q has T={T} time steps (shape {list(q.shape)}), expected T >= 1")
    if K < 1 or V < 1 or H < 1 or Bsz < 1:
        raise ValueError(f"{op}: empty dims in q {list(q.shape)} / v {list(v.shape)}, expected B, H, K, V >= 1")
    cu_host = B.check_varlen(op, cu_seqlens, Bsz, T, cu_seqlens_cpu)
    N = B.num_sequences(Bsz, cu_seqlens)
    if initial_state is not None:
        B.check_tensor(op, "initial_state", initial_state, shape=(N, H, K, V), layout="[N, H, K, V]")
    if scale is None:
        scale = K ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"{op}: scale must be a float or None, got {type(scale).__name__}")
    return float(scale), cu_host


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal delta-rule attention.

    Args:
        q, k: ``[B, T, H, K]`` queries and keys (fp32 / bf16 / fp16, one dtype with ``v``). Keys should be
            L2-normalized (or pass ``use_qk_l2norm=True``) for the recurrence to be stable.
        v: ``[B, T, H, V]`` values.
        beta: ``[B, T, H]`` write strengths, usually in (0, 1) (or (0, 2) with negative eigenvalues).
        scale: multiplies q; default ``K ** -0.5``.
        initial_state: ``[N, H, K, V]`` state before the first token, ``N = B`` or the number of packed
            sequences when ``cu_seqlens`` is given. Any float dtype; used in fp32. Receives gradients.
        output_final_state: also return the ``[N, H, K, V]`` fp32 state after the last token.
        cu_seqlens: ``[N + 1]`` int offsets of packed sequences (then ``B`` must be 1); each sequence
            is processed as if alone, with its own initial and final state.
        cu_seqlens_cpu: optional host (CPU) copy of ``cu_seqlens``. With it a packed call makes no
            device->host copy (the chunk count comes from it); without it one small copy syncs. Dense
            inputs (no ``cu_seqlens``) never sync.
        use_qk_l2norm: L2-normalize q and k over their last dim first (inside the differentiable graph).
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in v's dtype; ``final_state`` is ``[N, H, K, V]``
        fp32, or ``None`` unless ``output_final_state``.
    """
    scale, cu_host = _check(q, k, v, beta, scale, initial_state, cu_seqlens, cu_seqlens_cpu)
    backend = B.resolve_backend(backend, q.device, OP)
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    if backend == "reference":
        from .reference import delta_rule_reference

        o, final = delta_rule_reference(q, k, v, beta, scale, initial_state, cu_seqlens)
    elif backend == "torch":
        from .torch_chunk import delta_rule_torch

        o, final = delta_rule_torch(q, k, v, beta, scale, initial_state, cu_seqlens, cu_seqlens_cpu=cu_host)
    else:
        K, V = q.shape[-1], v.shape[-1]
        if K > MAX_TRITON_HEAD_DIM or V > MAX_TRITON_HEAD_DIM:
            raise ValueError(
                f"{OP}: backend='triton' supports head dims up to {MAX_TRITON_HEAD_DIM}, got K={K} (q "
                f"{list(q.shape)}) and V={V} (v {list(v.shape)}); use backend='torch'"
            )
        from .triton_chunk import delta_rule_triton_chunk

        o, final = delta_rule_triton_chunk(q, k, v, beta, scale, initial_state, cu_seqlens, cu_host)
    return o, (final if output_final_state else None)


def fused_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same function as :func:`delta_rule` computed token by token in one Triton kernel (one program
    per sequence, head and block of V; the state stays in registers). Fast for decoding and short inputs.

    The kernel has no backward: when autograd needs gradients (grad mode on and an input requires grad)
    this calls the chunked Triton path instead, which computes the same function with gradients.
    Arguments and returns as in :func:`delta_rule`; needs CUDA tensors (or ``TRITON_INTERPRET=1``).
    """
    op = "fused_recurrent_delta_rule"
    scale, cu_host = _check(q, k, v, beta, scale, initial_state, cu_seqlens, cu_seqlens_cpu, op=op)
    B.resolve_backend("triton", q.device, op)
    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_TRITON_HEAD_DIM or V > MAX_TRITON_HEAD_DIM:
        raise ValueError(
            f"{op}: supports head dims up to {MAX_TRITON_HEAD_DIM}, got K={K} (q {list(q.shape)}) and "
            f"V={V} (v {list(v.shape)}); use delta_rule(backend='torch')"
        )
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, initial_state)
    )
    if needs_grad:
        from .triton_chunk import delta_rule_triton_chunk

        o, final = delta_rule_triton_chunk(q, k, v, beta, scale, initial_state, cu_seqlens, cu_host)
    else:
        from .triton_recurrent import delta_rule_triton_recurrent

        o, final = delta_rule_triton_recurrent(q, k, v, beta, scale, initial_state, cu_seqlens)
    return o, (final if output_final_state else None)
