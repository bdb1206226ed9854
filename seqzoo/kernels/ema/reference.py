"""The damped EMA one token at a time, in fp32: ``h_t = a·h_{t-1} + b·x_t``, ``y_t = Σ_n c·h_t``. The
bidirectional variant runs a second recurrence from the end of each sequence and adds it."""

from __future__ import annotations

import torch


def _run(x, a, b, c, h):
    # x: [T, D]; a, b, c: [D, N]; h: [D, N]
    ys = []
    for t in range(x.shape[0]):
        h = a * h + b * x[t, :, None]
        ys.append((c * h).sum(-1))
    y = torch.stack(ys, 0) if ys else x.new_zeros(0, x.shape[1])
    return y, h


def ema_reference(x, a, b, c, *, bidirectional=False, initial_state=None, output_final_state=False, cu_host=None):
    B, T, D = x.shape
    xf, af, bf, cf = x.float(), a.float(), b.float(), c.float()
    n = a.shape[-1]
    if cu_host is None:
        spans = [(b_, b_, 0, T) for b_ in range(B)]
    else:
        cs = cu_host.tolist()
        spans = [(0, i, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    ys, finals = [], []
    for row, seq, s, e in spans:
        xs = xf[row, s:e]
        h0 = initial_state[seq].float() if initial_state is not None else xf.new_zeros(D, n)
        if bidirectional:
            y1, _ = _run(xs, af[0], bf[0], cf[0], h0)
            y2, _ = _run(xs.flip(0), af[1], bf[1], cf[1], h0)
            y, h = y1 + y2.flip(0), None
        else:
            y, h = _run(xs, af, bf, cf, h0)
        ys.append(y)
        finals.append(h)
    y = torch.stack(ys, 0) if cu_host is None else torch.cat(ys, 0)[None]
    return y, (torch.stack(finals, 0) if output_final_state else None)
