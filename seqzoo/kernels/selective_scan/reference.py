"""Step-by-step fp32 recurrence for the selective scan (Mamba-1): the ground truth, readable as the paper.

Per sequence and channel d (group g = d // (D / G) supplies B and C), with the state ``x ∈ R^N`` (fp32):

    Δ_t = delta_t + delta_bias (then softplus if delta_softplus)
    x_t = exp(Δ_t A_d) ⊙ x_{t-1} + Δ_t u_t B_t                (x_0 = initial_state, or zeros)
    y_t = C_t · x_t + D_d u_t,       out_t = y_t · SiLU(z_t)   (when z is given)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discretize_delta(delta, delta_bias, delta_softplus):
    """``[B, T, D]`` -> fp32 Δ (fp64 for fp64 input), differentiable; mamba's ``selective_scan_fn`` convention."""
    d = delta.to(torch.promote_types(delta.dtype, torch.float32))
    if delta_bias is not None:
        d = d + delta_bias.to(d.dtype)
    if delta_softplus:
        d = F.softplus(d)
    return d


def _one_sequence(u, delta, A, B, C, h0):
    # u, delta: [T, D]; A: [D, N]; B, C: [T, D, N] (expanded per channel); h0: [D, N]
    x = h0
    ys = []
    for t in range(u.shape[0]):
        x = torch.exp(delta[t, :, None] * A) * x + (delta[t] * u[t])[:, None] * B[t]  # [D, N]
        ys.append((x * C[t]).sum(-1))  # [D]
    if not ys:  # an empty packed sequence
        return u.new_zeros(0, u.shape[1]), x
    return torch.stack(ys, 0), x


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             initial_state=None, output_final_state=False, cu_seqlens=None):
    """Same contract as :func:`seqzoo.kernels.selective_scan`; computes in fp32 (fp64 when called directly with
    fp64 tensors: the tests' ground truth), returns ``y`` in u's dtype and the final state in fp32."""
    Bsz, T, Dm = u.shape
    G = B.shape[2]
    f = torch.promote_types(u.dtype, torch.float32)
    delta = discretize_delta(delta, delta_bias, delta_softplus)  # [B, T, D]
    uf, Af = u.to(f), A.to(f)
    Bf = B.to(f).repeat_interleave(Dm // G, dim=2)  # [B, T, D, N]: channel d reads group d // (D / G)
    Cf = C.to(f).repeat_interleave(Dm // G, dim=2)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(Bsz)]
    else:
        cs = cu_seqlens.tolist()
        spans = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    outs, finals = [], []
    for n, (b, s, e) in enumerate(spans):
        h0 = uf.new_zeros(Dm, A.shape[1]) if initial_state is None else initial_state[n].to(f)
        y, x = _one_sequence(uf[b, s:e], delta[b, s:e], Af, Bf[b, s:e], Cf[b, s:e], h0)
        outs.append(y)
        finals.append(x)
    y = torch.stack(outs, 0) if cu_seqlens is None else torch.cat(outs, 0)[None]  # [B, T, D]
    if D is not None:
        y = y + D.to(f) * uf
    if z is not None:
        y = y * F.silu(z.to(f))
    final = torch.stack(finals, 0) if output_final_state else None  # [N_seq, D, N]
    return y.to(u.dtype), final
