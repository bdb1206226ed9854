"""The SSD scan (Mamba-2's state-space duality, arXiv 2405.21060) with mamba_ssm's argument conventions.

Per sequence and head h, with the state ``S`` a ``[P, N]`` matrix (fp32) and the group ``g = h // (H / G)``:

    Δ_t = softplus(dt_t + dt_bias_h) clamped to dt_limit       S_t = exp(Δ_t A_h) S_{t-1} + Δ_t x_t B_{t,g}ᵀ
    y_t = S_t C_{t,g} + D_h x_t

Backends (``backend=``): ``"reference"`` the per-token loop (reference.py), ``"torch"`` the chunked dual form in
PyTorch (torch_chunk.py, the CPU path), ``"triton"`` the chunked Triton kernels (triton_chunk.py; without
autograd and for T ≤ 64 the token-by-token kernel of triton_recurrent.py, for decoding), ``"auto"`` Triton on
CUDA and torch otherwise (see ``seqzoo.kernels._backend``).
"""

from __future__ import annotations

import math

import torch

from .. import _backend as Bk

__all__ = ["ssd_scan"]

OP = "ssd_scan"
MAX_TRITON_DIM = 256


def _check(x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, chunk_size, initial_state, cu_seqlens):
    Bk.check_tensor(OP, "x", x, ndim=4, layout="[B, T, H, P]")
    Bsz, T, H, P = x.shape
    Bk.check_tensor(OP, "dt", dt, shape=(Bsz, T, H), layout="[B, T, H]")
    Bk.check_tensor(OP, "A", A, shape=(H,), layout="[H] (negative: the log-decay rate per head)")
    Bk.check_tensor(OP, "B", B, shape=(Bsz, T, None, None), layout="[B, T, G, N]")
    G, N = B.shape[2], B.shape[3]
    Bk.check_tensor(OP, "C", C, shape=(Bsz, T, G, N), layout="[B, T, G, N] (the shape of B)")
    Bk.check_same_dtype(OP, x=x, B=B, C=C)
    if T < 1:
        raise ValueError(f"{OP}: x has T={T} time steps (shape {list(x.shape)}), expected T >= 1")
    if min(Bsz, H, P, G, N) < 1:
        raise ValueError(f"{OP}: empty dims in x {list(x.shape)} / B {list(B.shape)}, expected B, H, P, G, N >= 1")
    if H % G != 0:
        raise ValueError(f"{OP}: the number of heads H={H} (x {list(x.shape)}) must be a multiple of the number "
                         f"of groups G={G} (B {list(B.shape)}); head h reads group h // (H / G)")
    if D is not None:
        Bk.check_tensor(OP, "D", D, dtypes=Bk.FLOAT_DTYPES)
        if tuple(D.shape) not in ((H,), (H, P)):
            raise ValueError(f"{OP}: D has shape {list(D.shape)}, expected [H]=[{H}] or [H, P]=[{H}, {P}]")
    if dt_bias is not None:
        Bk.check_tensor(OP, "dt_bias", dt_bias, shape=(H,), layout="[H]")
    if not isinstance(dt_softplus, bool):
        raise TypeError(f"{OP}: dt_softplus must be a bool, got {dt_softplus!r}")
    if (not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dt_limit)
            or math.isnan(dt_limit[0]) or math.isnan(dt_limit[1]) or not dt_limit[0] < dt_limit[1]):
        raise ValueError(f"{OP}: dt_limit must be a pair (low, high) of numbers with low < high, got {dt_limit!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"{OP}: chunk_size must be a positive int, got {chunk_size!r}")
    Bk.check_cu_seqlens(OP, cu_seqlens, Bsz, T)
    Nseq = Bk.num_sequences(Bsz, cu_seqlens)
    if initial_state is not None:
        Bk.check_tensor(OP, "initial_state", initial_state, shape=(Nseq, H, P, N), layout="[N_seq, H, P, N]")
    Bk.check_same_device(OP, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, initial_state=initial_state,
                         cu_seqlens=cu_seqlens)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-2's SSD scan, the arguments of mamba_ssm's ``mamba_chunk_scan_combined`` (minus the gate ``z``,
    which belongs to the layer) in the ``[B, T, ...]`` layout.

    Args:
        x: ``[B, T, H, P]`` inputs (fp32 / bf16 / fp16, one dtype with B and C).
        dt: ``[B, T, H]`` raw time steps (any float dtype); ``Δ = softplus(dt + dt_bias)`` clamped to ``dt_limit``.
        A: ``[H]`` per-head rate, negative (Mamba-2 stores ``A = -exp(A_log)``); used in fp32.
        B, C: ``[B, T, G, N]`` input and output projections per group; ``H % G == 0`` and head ``h`` reads
            group ``h // (H / G)`` (as mamba_ssm, like grouped-query attention).
        D: ``[H]`` or ``[H, P]`` skip connection, ``y += D x``; optional.
        dt_bias: ``[H]`` added to dt before the softplus; optional.
        dt_softplus: apply ``softplus`` (the identity above 20) to ``dt + dt_bias``.
        dt_limit: ``(low, high)`` clamp of Δ, applied when not the default ``(0, inf)``.
        chunk_size: tokens per chunk of the torch path (the result does not depend on it beyond rounding; the
            Triton kernels use 64-token chunks).
        initial_state: ``[N_seq, H, P, N]`` state before the first token (N_seq = B, or the number of packed
            sequences). Any float dtype; used in fp32. Receives gradients.
        output_final_state: also return the ``[N_seq, H, P, N]`` fp32 state after the last token.
        cu_seqlens: ``[N_seq + 1]`` int offsets of packed sequences (B must be 1); each one runs alone.
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``(y, final_state)``: y ``[B, T, H, P]`` in x's dtype; final_state ``[N_seq, H, P, N]`` fp32 or None.
        Gradients reach x, dt, A, B, C, D, dt_bias and initial_state, also from the final state.
    """
    _check(x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, chunk_size, initial_state, cu_seqlens)
    backend = Bk.resolve_backend(backend, x.device, OP)
    kwargs = dict(D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=tuple(float(v) for v in dt_limit),
                  initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                  chunk_size=chunk_size)
    if backend == "reference":
        from .reference import ssd_scan_reference

        return ssd_scan_reference(x, dt, A, B, C, **kwargs)
    if backend == "torch":
        from .torch_chunk import ssd_scan_torch

        return ssd_scan_torch(x, dt, A, B, C, **kwargs)
    P, N = x.shape[-1], B.shape[-1]
    if P > MAX_TRITON_DIM or N > MAX_TRITON_DIM:
        raise ValueError(f"{OP}: backend='triton' supports P and N up to {MAX_TRITON_DIM}, got P={P} (x "
                         f"{list(x.shape)}) and N={N} (B {list(B.shape)}); use backend='torch'")
    from .triton_chunk import ssd_scan_triton

    return ssd_scan_triton(x, dt, A, B, C, **kwargs)
