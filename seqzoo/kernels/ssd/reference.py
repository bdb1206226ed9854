"""Step-by-step fp32 recurrence for the SSD scan (Mamba-2): the ground truth, readable as the paper.

Per sequence and head h (group g = h // (H / G) supplies B and C), with the state ``S ∈ R^{P×N}`` (fp32):

    Δ_t = discretize(dt_t + dt_bias)                          (softplus, dt_limit; see _dt.py)
    S_t = exp(Δ_t A_h) S_{t-1} + Δ_t x_t B_tᵀ                 (S_0 = initial_state, or zeros)
    y_t = S_t C_t + D_h ⊙ x_t
"""

from __future__ import annotations

import torch

from ._dt import discretize_dt


def _one_sequence(x, delta, A, B, C, h0):
    # x: [T, H, P]; delta: [T, H]; A: [H]; B, C: [T, H, N] (already expanded per head); h0: [H, P, N]
    S = h0
    outs = []
    for t in range(x.shape[0]):
        decay = torch.exp(delta[t] * A)  # [H]
        S = decay[:, None, None] * S + (delta[t, :, None] * x[t])[:, :, None] * B[t, :, None, :]  # [H, P, N]
        outs.append(torch.einsum("hpn,hn->hp", S, C[t]))  # [H, P]
    if not outs:  # an empty packed sequence
        return x.new_zeros(0, x.shape[1], x.shape[2]), S
    return torch.stack(outs, 0), S


def ssd_scan_reference(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")),
                       initial_state=None, output_final_state=False, cu_seqlens=None, chunk_size=64):
    """Same contract as :func:`seqzoo.kernels.ssd_scan` (``chunk_size`` is ignored: there are no chunks);
    computes in fp32, returns ``y`` in x's dtype and the final state in fp32. Differentiable by autograd.
    Called directly with fp64 tensors it computes in fp64 (the tests' ground truth for fp32 backends)."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, T, H]
    f = torch.promote_types(x.dtype, torch.float32)
    xf, Af = x.to(f), A.to(f)
    Bf = B.to(f).repeat_interleave(H // G, dim=2)  # [B, T, H, N]: head h reads group h // (H / G)
    Cf = C.to(f).repeat_interleave(H // G, dim=2)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(Bsz)]
    else:
        cs = cu_seqlens.tolist()
        spans = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    outs, finals = [], []
    for n, (b, s, e) in enumerate(spans):
        h0 = x.new_zeros(H, P, N, dtype=f) if initial_state is None else initial_state[n].to(f)
        y, S = _one_sequence(xf[b, s:e], delta[b, s:e], Af, Bf[b, s:e], Cf[b, s:e], h0)
        outs.append(y)
        finals.append(S)
    y = torch.stack(outs, 0) if cu_seqlens is None else torch.cat(outs, 0)[None]  # [B, T, H, P]
    if D is not None:
        Df = D.to(f) if D.dim() == 2 else D.to(f)[:, None]  # [H, P] or [H, 1]
        y = y + Df * xf
    final = torch.stack(finals, 0) if output_final_state else None  # [N_seq, H, P, N]
    return y.to(x.dtype), final
