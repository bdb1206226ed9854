"""MEGA's multi-dimensional damped exponential moving average (arXiv 2209.10655, ``MultiHeadEMA``).

Every channel ``d`` of ``x [B, T, D]`` is expanded to ``N`` (16 in MEGA) decaying states:

    h_t[d, n] = a[d, n] · h_{t-1}[d, n] + b[d, n] · x_t[d]          y_t[d] = Σ_n c[d, n] · h_t[d, n]

a time-invariant linear recurrence, so ``y`` is also the causal convolution of ``x`` with the kernel
``k[d, τ] = Σ_n c·b·a^τ``. MEGA's parameters map to ``a = 1 - sigmoid(δ)·sigmoid(α)``, ``b = sigmoid(δ)·β``,
``c = γ/√N`` (:func:`mega_ema_coefficients`). Paths (``backend``):

- ``"fft"``: as MEGA computes it: generate the length-T kernel, convolve by ``rfft`` of length 2T. O(T log T).
- ``"scan"``: a chunked scan: a ``[C, C]`` Toeplitz block inside each chunk of C tokens, and the ``[D, N]``
  state carried from chunk to chunk. O(T·C + T·N).
- ``"reference"``: the recurrence one token at a time, in fp32.

``ema_step`` is the one-token update for decoding. Bidirectional (encoders): a second set of ``(a, b, c)``
runs over the reversed sequence and the two outputs add (both include the current token, as in MEGA).
"""

from __future__ import annotations

import math
import os

import torch

from .._backend import (
    ENV_BACKEND,
    check_choice,
    check_same_device,
    check_tensor,
    check_varlen,
    num_sequences,
)

OP = "ema"
BACKENDS = ("auto", "fft", "scan", "reference")

__all__ = ["ema", "ema_step", "mega_ema_coefficients"]


def mega_ema_coefficients(delta: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor):
    """MEGA's EMA parameters (each ``[..., D, N]``) -> ``(a, b, c)`` of :func:`ema`. ``p = sigmoid(delta)`` is
    the weight of the new input, ``sigmoid(alpha)`` the damping: ``a = 1 - p·sigmoid(alpha)``, ``b = p·beta``,
    ``c = gamma / sqrt(N)``. (MEGA's code calls these ``delta`` and ``alpha``; its paper swaps the names.)"""
    p = torch.sigmoid(delta.float())
    a = 1.0 - p * torch.sigmoid(alpha.float())
    return a, p * beta.float(), gamma.float() / math.sqrt(gamma.shape[-1])


def _check_coeffs(D, a, b, c, bidirectional):
    shape = (2, D, None) if bidirectional else (D, None)
    layout = "[2, D, N] (forward, backward direction)" if bidirectional else "[D, N]"
    check_tensor(OP, "a", a, shape=shape, layout=layout)
    n = a.shape[-1]
    if n < 1:
        raise ValueError(f"{OP}: a has shape {list(a.shape)}; the expansion N (last dim) must be >= 1")
    check_tensor(OP, "b", b, shape=a.shape, layout=layout + " (same as a)")
    check_tensor(OP, "c", c, shape=a.shape, layout=layout + " (same as a)")
    return n


def ema(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    bidirectional: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The damped EMA of every channel (see the module docstring for the recurrence).

    Args:
        x: ``[B, T, D]``, fp32 / bf16 / fp16, any ``T >= 1``.
        a, b, c: decay (in (0, 1]), input and output coefficients, ``[D, N]``; ``[2, D, N]`` when
            ``bidirectional`` (index 1: the direction from the end of the sequence). Computed in fp32.
        bidirectional: add the EMA of the reversed sequence (no states then).
        initial_state: optional ``[B or N_seq, D, N]`` state before the first token (causal only).
        output_final_state: also return ``h`` after the last token, fp32 (causal only).
        cu_seqlens / cu_seqlens_cpu: packed sequences (B = 1), as in every op.
        chunk_size: C of the ``"scan"`` path.
        backend: ``"auto"`` (= ``"fft"``, or ``"reference"`` when ``SEQZOO_BACKEND=reference``), ``"fft"``,
            ``"scan"``, ``"reference"``. There is no Triton kernel: ``"triton"`` is refused.

    Returns:
        ``(y [B, T, D] in x's dtype, final_state [B or N_seq, D, N] fp32 or None)``.
    """
    check_tensor(OP, "x", x, ndim=3, layout="[B, T, D]")
    B, T, D = x.shape
    if T < 1:
        raise ValueError(f"{OP}: x must have at least one token (T >= 1), got shape {list(x.shape)}")
    if not isinstance(bidirectional, bool):
        raise TypeError(f"{OP}: bidirectional must be a bool, got {bidirectional!r}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"{OP}: output_final_state must be a bool, got {output_final_state!r}")
    n = _check_coeffs(D, a, b, c, bidirectional)
    if bidirectional and (initial_state is not None or output_final_state):
        raise ValueError(f"{OP}: a bidirectional EMA has no state to start from or return; pass "
                         "initial_state=None and output_final_state=False (or bidirectional=False)")
    host = check_varlen(OP, cu_seqlens, B, T, cu_seqlens_cpu)
    N = num_sequences(B, cu_seqlens)
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, shape=(N, D, n), layout="[N, D, N_expansion]")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{OP}: chunk_size must be a positive int, got {chunk_size!r}")
    check_same_device(OP, x=x, a=a, b=b, c=c, initial_state=initial_state, cu_seqlens=cu_seqlens)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{OP}: backend must be one of {BACKENDS} (there is no Triton kernel), got {backend!r}")
    if backend == "auto":
        backend = "reference" if os.environ.get(ENV_BACKEND, "").strip() == "reference" else "fft"
    kwargs = dict(bidirectional=bidirectional, initial_state=initial_state, output_final_state=output_final_state,
                  cu_host=host)
    if backend == "reference":
        from .reference import ema_reference

        y, final = ema_reference(x, a, b, c, **kwargs)
    elif backend == "fft":
        from .fft import ema_fft

        y, final = ema_fft(x, a, b, c, **kwargs)
    else:
        from .torch_scan import ema_scan

        y, final = ema_scan(x, a, b, c, chunk_size=chunk_size, **kwargs)
    return y.to(x.dtype), final


@torch.no_grad()
def ema_step(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, state: torch.Tensor):
    """One decoding step of the causal EMA: ``x [B, D]``, ``state [B, D, N]`` (fp32; zeros before the first
    token) -> ``(y [B, D] in x's dtype, new state [B, D, N] fp32)``."""
    check_tensor(OP, "x", x, ndim=2, layout="[B, D]")
    Bsz, D = x.shape
    n = _check_coeffs(D, a, b, c, False)
    check_tensor(OP, "state", state, shape=(Bsz, D, n), layout="[B, D, N]")
    h = a.float() * state.float() + b.float() * x.float()[..., None]  # [B, D, N]
    return (h * c.float()).sum(-1).to(x.dtype), h
