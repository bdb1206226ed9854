"""Mamba-1's selective scan (arXiv 2312.00752), a diagonal state-space recurrence, in the ``[B, T, ...]`` layout.

Per sequence and channel d, with the state ``x`` an ``[N]`` vector (fp32) and the group ``g = d // (D / G)``:

    Δ_t = delta_t + delta_bias_d (softplus if delta_softplus)
    x_t = exp(Δ_t A_d) ⊙ x_{t-1} + Δ_t u_t B_{t,g}        y_t = (C_{t,g} · x_t + D_d u_t) · SiLU(z_t)

With ``delta``, ``B`` and ``C`` not depending on the input (broadcast the same values over batch and time) it
is a diagonal linear time-invariant SSM (S4D); with N = 1 it is a per-channel damped EMA (MEGA): README.md.

Backends (``backend=``): ``"reference"`` the per-token loop (reference.py), ``"torch"`` the token-by-token
scan in PyTorch with a hand-written backward (torch_scan.py, the CPU path), ``"triton"`` the chunked Triton
kernels (triton_chunk.py; without autograd and for T ≤ 64 the token-by-token kernel of triton_recurrent.py,
for decoding), ``"auto"`` Triton on CUDA and torch otherwise (see ``seqzoo.kernels._backend``).
"""

from __future__ import annotations

import torch

from .. import _backend as Bk

__all__ = ["selective_scan"]

OP = "selective_scan"
MAX_TRITON_STATE = 256


def _check(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens):
    Bk.check_tensor(OP, "u", u, ndim=3, layout="[B, T, D]")
    Bsz, T, Dm = u.shape
    Bk.check_tensor(OP, "delta", delta, shape=(Bsz, T, Dm), layout="[B, T, D] (the shape of u)")
    Bk.check_tensor(OP, "A", A, shape=(Dm, None), layout="[D, N] (real; negative for a decaying state)")
    N = A.shape[1]
    Bk.check_tensor(OP, "B", B, shape=(Bsz, T, None, N), layout="[B, T, G, N]")
    G = B.shape[2]
    Bk.check_tensor(OP, "C", C, shape=(Bsz, T, G, N), layout="[B, T, G, N] (the shape of B)")
    Bk.check_same_dtype(OP, u=u, B=B, C=C)
    if T < 1:
        raise ValueError(f"{OP}: u has T={T} time steps (shape {list(u.shape)}), expected T >= 1")
    if min(Bsz, Dm, N, G) < 1:
        raise ValueError(f"{OP}: empty dims in u {list(u.shape)} / B {list(B.shape)}, expected B, D, G, N >= 1")
    if Dm % G != 0:
        raise ValueError(f"{OP}: the channel count D={Dm} (u {list(u.shape)}) must be a multiple of the number of "
                         f"groups G={G} (B {list(B.shape)}); channel d reads group d // (D / G)")
    if D is not None:
        Bk.check_tensor(OP, "D", D, shape=(Dm,), layout="[D]")
    if z is not None:
        Bk.check_tensor(OP, "z", z, shape=(Bsz, T, Dm), layout="[B, T, D] (the shape of u)")
    if delta_bias is not None:
        Bk.check_tensor(OP, "delta_bias", delta_bias, shape=(Dm,), layout="[D]")
    if not isinstance(delta_softplus, bool):
        raise TypeError(f"{OP}: delta_softplus must be a bool, got {delta_softplus!r}")
    Bk.check_cu_seqlens(OP, cu_seqlens, Bsz, T)
    Nseq = Bk.num_sequences(Bsz, cu_seqlens)
    if initial_state is not None:
        Bk.check_tensor(OP, "initial_state", initial_state, shape=(Nseq, Dm, N), layout="[N_seq, D, N]")
    Bk.check_same_device(OP, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                         initial_state=initial_state, cu_seqlens=cu_seqlens)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba's selective scan (the arguments of mamba_ssm's ``selective_scan_fn``, time-major).

    Args:
        u: ``[B, T, D]`` inputs (fp32 / bf16 / fp16, one dtype with B and C).
        delta: ``[B, T, D]`` raw time steps (any float dtype).
        A: ``[D, N]`` real state matrix diagonal (Mamba: ``-exp(A_log)``); used in fp32.
        B, C: ``[B, T, G, N]``, ``D % G == 0``, channel ``d`` reads group ``d // (D / G)`` (G = 1 is Mamba).
        D: ``[D]`` skip connection; z: ``[B, T, D]`` gate, ``y ← y · SiLU(z)``; delta_bias: ``[D]``. Optional.
        delta_softplus: ``Δ = softplus(delta + delta_bias)`` instead of ``delta + delta_bias``.
        initial_state: ``[N_seq, D, N]`` state before the first token (N_seq = B, or the number of packed
            sequences). Any float dtype; used in fp32. Receives gradients.
        output_final_state: also return the ``[N_seq, D, N]`` fp32 state after the last token.
        cu_seqlens: ``[N_seq + 1]`` int offsets of packed sequences (B must be 1); each one runs alone.
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``(y, final_state)``: y ``[B, T, D]`` in u's dtype; final_state ``[N_seq, D, N]`` fp32 or None.
        Gradients reach u, delta, A, B, C, D, z, delta_bias and initial_state, also from the final state.
    """
    _check(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens)
    backend = Bk.resolve_backend(backend, u.device, OP)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state,
                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if backend == "reference":
        from .reference import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, **kwargs)
    if backend == "torch":
        from .torch_scan import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, **kwargs)
    if A.shape[1] > MAX_TRITON_STATE:
        raise ValueError(f"{OP}: backend='triton' supports N up to {MAX_TRITON_STATE}, got N={A.shape[1]} "
                         f"(A {list(A.shape)}); use backend='torch'")
    from .triton_chunk import selective_scan_triton

    return selective_scan_triton(u, delta, A, B, C, **kwargs)
