"""Step-by-step fp32 recurrence for (decayed) linear attention: the ground truth, readable as the paper.

Per head h, with the state ``S ∈ R^{K×V}`` and ``λ_h = exp(decay[h])``:

    S_t = λ_h S_{t-1} + k_t v_tᵀ            (S_0 = initial_state, or zeros)
    o_t = scale · S_tᵀ q_t

Non-causal: every query reads the state after the whole sequence, ``o_t = scale · S_Tᵀ q_t`` with
``S_T = S_0 + Σ_t k_t v_tᵀ`` (decay is rejected in that mode by the public function).
"""

from __future__ import annotations

import torch


def _one_sequence(q, k, v, g, scale, h0, causal):
    # q, k: [T, H, K]; v: [T, H, V]; g: [H] fp32 log-decay or None; h0: [H, K, V] fp32
    T = q.shape[0]
    S = h0
    if not causal:
        for t in range(T):
            S = S + k[t, :, :, None] * v[t, :, None, :]  # [H, K, V]
        o = scale * torch.einsum("thk,hkv->thv", q, S)
        return o, S
    lam = None if g is None else torch.exp(g)[:, None, None]  # [H, 1, 1]
    outs = []
    for t in range(T):
        if lam is not None:
            S = lam * S
        S = S + k[t, :, :, None] * v[t, :, None, :]  # [H, K, V]
        outs.append(scale * torch.einsum("hk,hkv->hv", q[t], S))  # [H, V]
    if not outs:  # an empty packed sequence
        return q.new_zeros(0, q.shape[1], v.shape[-1]), S
    return torch.stack(outs, 0), S


def linear_attention_reference(q, k, v, decay=None, scale=1.0, causal=True, initial_state=None,
                               output_final_state=False, cu_seqlens=None):
    """Same contract as :func:`seqzoo.kernels.linear_attention`; computes in fp32, returns ``o`` in the
    input dtype and the final state in fp32. Differentiable (through plain autograd)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = q.dtype
    qf, kf, vf = q.float(), k.float(), v.float()
    g = None if decay is None else decay.detach().float()
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        cs = cu_seqlens.tolist()
        spans = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    outs, finals = [], []
    for n, (b, s, e) in enumerate(spans):
        h0 = q.new_zeros(H, K, V, dtype=torch.float32) if initial_state is None else initial_state[n].float()
        o, S = _one_sequence(qf[b, s:e], kf[b, s:e], vf[b, s:e], g, scale, h0, causal)
        outs.append(o)
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack(outs, 0)  # [B, T, H, V]
    else:
        o = torch.cat(outs, 0)[None]  # [1, T, H, V]
    final = torch.stack(finals, 0) if output_final_state else None  # [N, H, K, V]
    return o.to(dtype), final
