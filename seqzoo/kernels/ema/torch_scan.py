"""The EMA as a chunked scan (no FFT). Inside a chunk of C tokens the EMA is a ``[C, C]`` lower-triangular
Toeplitz matrix per channel, ``M[d, i, j] = k[d, i - j]``; across chunks only the ``[D, N]`` state moves:

    u_k      = Σ_j b·a^(C-1-j)·x[kC + j]                  (what chunk k adds to the state)
    s_{k+1}  = a^C · s_k + u_k,      s_0 = h0               (the scan, one step per chunk)
    y[kC+i]  = Σ_j M[i, j]·x[kC + j] + Σ_n c·a^(i+1)·s_k    (inside the chunk + the carried state)

Three batched matmuls and a loop of T/C ``[D, N]`` updates; O(T·C·D + T·D·N). This is a chunked scan
written for the EMA: ``ssd_scan`` (Mamba-2) has one scalar decay per head, while the EMA decays each of
its D·N states at its own rate, which would cost D·N heads of size 1 there.
"""

from __future__ import annotations

import torch

from .._chunk import pad_time
from ._common import flip_rows, from_rows, log_decay, to_rows


def _causal(x, la, a, b, c, h0, lens, chunk, want_final):
    # x: [R, L, D] fp32 -> y [R, L, D], final [R, D, N] or None
    R, L, D = x.shape
    N = la.shape[1]
    C = min(chunk, L)
    xp = pad_time(x, C)  # [R, Lp, D]
    nc = xp.shape[1] // C
    j = torch.arange(C, device=x.device)
    pw = torch.exp(la[..., None] * j.float())  # [D, N, C]: a^j
    kern = ((c * b)[..., None] * pw).sum(1)  # [D, C]: k[τ], τ < C
    lag = j[:, None] - j[None, :]  # [C, C]
    M = kern[:, lag.clamp(min=0)] * (lag >= 0)  # [D, C, C]
    xc = xp.reshape(R, nc, C, D).permute(3, 2, 0, 1).reshape(D, C, R * nc)  # [D, C, R·nc]
    y = torch.bmm(M, xc)  # [D, C, R·nc]
    u = torch.bmm(b[..., None] * pw.flip(-1), xc).reshape(D, N, R, nc)  # [D, N, R, nc]
    decay_c = torch.exp(la * C)[..., None]  # [D, N, 1]
    s = h0.float().permute(1, 2, 0) if h0 is not None else x.new_zeros(D, N, R)  # [D, N, R]
    states = []
    for k in range(nc):
        states.append(s)
        s = decay_c * s + u[..., k]
    S = torch.stack(states, -1)  # [D, N, R, nc]: the state entering chunk k
    c_out = (c[..., None] * pw * a[..., None]).transpose(1, 2)  # [D, C, N]: c·a^(i+1)
    y = y + torch.bmm(c_out, S.reshape(D, N, R * nc))
    y = y.reshape(D, C, R, nc).permute(2, 3, 1, 0).reshape(R, nc * C, D)[:, :L]  # [R, L, D]
    final = None
    if want_final:
        # the last (partial) chunk of each row: h = a^r·s_kl + Σ_{j<r} b·a^(r-1-j)·x[kl·C + j]
        n = torch.tensor(lens, device=x.device)
        kl = ((n - 1).clamp(min=0) // C)  # [R]
        r = (n - kl * C).float()  # tokens of the last chunk (0 for an empty row)
        rows = torch.arange(R, device=x.device)
        s_last = S[:, :, rows, kl].permute(2, 0, 1)  # [R, D, N]
        x_last = xc.reshape(D, C, R, nc)[:, :, rows, kl].permute(2, 0, 1)  # [R, D, C]
        e = r[:, None] - 1 - j[None].float()  # [R, C]: r-1-j
        wts = torch.exp(la[None, :, :, None] * e.clamp(min=0)[:, None, None, :]) * (e >= 0)[:, None, None, :]
        final = torch.exp(la[None] * r[:, None, None]) * s_last + b * torch.einsum("rdnc,rdc->rdn", wts, x_last)
    return y, final


def ema_scan(x, a, b, c, *, chunk_size=64, bidirectional=False, initial_state=None, output_final_state=False,
             cu_host=None):
    xr, lens = to_rows(x.float(), cu_host)  # [R, L, D]
    a, b, c = a.float(), b.float(), c.float()
    la = log_decay(a)
    if bidirectional:
        y, _ = _causal(xr, la[0], a[0], b[0], c[0], None, lens, chunk_size, False)
        y2, _ = _causal(flip_rows(xr, lens), la[1], a[1], b[1], c[1], None, lens, chunk_size, False)
        y = y + flip_rows(y2, lens)
        final = None
    else:
        y, final = _causal(xr, la, a, b, c, initial_state, lens, chunk_size, output_final_state)
    return from_rows(y, cu_host), final
