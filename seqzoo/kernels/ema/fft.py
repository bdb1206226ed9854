"""The EMA as MEGA computes it: generate the kernel ``k[d, τ] = Σ_n c·b·a^τ`` for the whole length, then a
causal convolution by FFT (``rfft`` of length 2T, so the circular wrap-around never reaches ``[0, T)``).

An initial state adds ``Σ_n c·a^(t+1)·h0`` to step t; the final state is a power-weighted sum over the
sequence (``_common.final_state``). Differentiable by autograd; every tensor is O(T·D) or O(D·N·256)."""

from __future__ import annotations

import torch

from ._common import final_state, flip_rows, from_rows, log_decay, power_sum, to_rows


def _causal(x, la, a, b, c, h0):
    # x: [R, L, D] fp32 -> [R, L, D]
    R, L, D = x.shape
    k = power_sum(c * b, la, L)  # [D, L]
    n = 2 * L
    xt = x.transpose(1, 2)  # [R, D, L]
    y = torch.fft.irfft(torch.fft.rfft(xt, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]  # [R, D, L]
    if h0 is not None:
        y = y + power_sum(c * a * h0.float(), la, L)  # Σ_n c a^(t+1) h0
    return y.transpose(1, 2)


def ema_fft(x, a, b, c, *, bidirectional=False, initial_state=None, output_final_state=False, cu_host=None):
    xr, lens = to_rows(x.float(), cu_host)  # [R, L, D]
    a, b, c = a.float(), b.float(), c.float()
    la = log_decay(a)
    if bidirectional:
        y = _causal(xr, la[0], a[0], b[0], c[0], None)
        y = y + flip_rows(_causal(flip_rows(xr, lens), la[1], a[1], b[1], c[1], None), lens)
    else:
        y = _causal(xr, la, a, b, c, initial_state)
    final = final_state(xr, lens, la, b, initial_state) if output_final_state else None
    return from_rows(y, cu_host), final
