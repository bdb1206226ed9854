"""The dilated convolution stack one level and one tap at a time, in fp32, one sequence at a time: the ground
truth. Every line is the definition in ``__init__.py``:

    a_l[t]  = bias[l] + Σ_j weight[l, :, j] · h_l[t - (K-1-j)·d_l],   h_l[t < 0] = the state's history
    h_{l+1} = h_l + φ(a_l)   (φ = identity on the last level; no ``h_l +`` without residual)
"""

from __future__ import annotations

import torch

from . import _act, level_spans


def _one_sequence(x, weight, bias, h0, dilation_base, activation, residual):
    # x: [T, D] fp32; h0: [D, S] fp32 or None
    T, D = x.shape
    L, _, K = weight.shape
    h, finals = x, []
    for level, (d, p, off) in enumerate(level_spans(L, K, dilation_base)):
        past = h0[:, off:off + p].t() if h0 is not None else x.new_zeros(p, D)  # [P_l, D], oldest first
        hp = torch.cat([past, h], 0)  # [P_l + T, D]: hp[P_l + t] = h_l[t]
        finals.append(hp[T:].t())  # the last P_l inputs of this level: [D, P_l]
        a = x.new_zeros(T, D) if bias is None else bias[level].float().expand(T, D)
        for j in range(K):
            shift = (K - 1 - j) * d
            a = a + weight[level, :, j].float() * hp[p - shift: p - shift + T]  # h_l[t - shift]
        out = _act(a, activation) if level < L - 1 else a
        h = h + out if residual else out
    return h, torch.cat(finals, 1)  # [T, D], [D, S]


def dilated_conv_reference(x, weight, bias=None, *, dilation_base=2, activation="silu", residual=True,
                           initial_state=None, output_final_state=False, cu_seqlens=None,
                           cu_seqlens_cpu=None):
    B, T, D = x.shape
    xf = x.float()
    h0 = initial_state.float() if initial_state is not None else None
    if cu_seqlens is None:
        spans = [(b, b, 0, T) for b in range(B)]
    else:
        cs = cu_seqlens.tolist()
        spans = [(0, n, cs[n], cs[n + 1]) for n in range(len(cs) - 1)]
    ys, finals = [], []
    for b, n, s, e in spans:
        y, f = _one_sequence(xf[b, s:e], weight, bias, None if h0 is None else h0[n], dilation_base,
                             activation, residual)
        ys.append(y)
        finals.append(f)
    y = torch.stack(ys, 0) if cu_seqlens is None else torch.cat(ys, 0)[None]
    final = torch.stack(finals, 0) if output_final_state else None
    return y.to(x.dtype), final
