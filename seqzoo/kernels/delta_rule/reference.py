"""The delta rule, one token at a time, in fp32: the ground truth every other backend is tested against.

Per head, with a state ``S`` of shape ``[K, V]`` (DeltaNet, Yang et al. 2024, arXiv 2406.06484):

    v_old_t = S_{t-1}^T k_t                       what the memory currently returns for key k_t
    v_new_t = beta_t * (v_t - v_old_t)            the correction, scaled by the write strength
    S_t     = S_{t-1} + k_t v_new_t^T             = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t     = S_t^T (scale * q_t)

Slow (T sequential steps) but differentiable by autograd, so it also gives reference gradients.
"""

from __future__ import annotations

import torch


def _one_sequence(q, k, v, beta, state):
    """q, k: [T, H, K] (q already scaled); v: [T, H, V]; beta: [T, H]; state: [H, K, V]. All fp32."""
    outputs = []
    for t in range(q.shape[0]):
        k_t, v_t, q_t, b_t = k[t], v[t], q[t], beta[t]  # [H, K], [H, V], [H, K], [H]
        v_old = torch.einsum("hkv,hk->hv", state, k_t)  # S^T k        [H, V]
        v_new = b_t[:, None] * (v_t - v_old)  # beta (v - S^T k)           [H, V]
        state = state + k_t[:, :, None] * v_new[:, None, :]  # S += k v_new^T   [H, K, V]
        outputs.append(torch.einsum("hkv,hk->hv", state, q_t))  # o = S^T q     [H, V]
    o = torch.stack(outputs) if outputs else v.new_zeros(v.shape)
    return o, state


def delta_rule_reference(q, k, v, beta, scale, initial_state=None, cu_seqlens=None):
    """Inputs already checked; returns ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] fp32)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    qf, kf, vf, bf = q.float() * scale, k.float(), v.float(), beta.float()
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]
    outs, finals = [], []
    for n, (b, start, end) in enumerate(bounds):
        if initial_state is None:
            s0 = qf.new_zeros(H, K, V)
        else:
            s0 = initial_state[n].float()
        o, s = _one_sequence(qf[b, start:end], kf[b, start:end], vf[b, start:end], bf[b, start:end], s0)
        outs.append(o)
        finals.append(s)
    if cu_seqlens is None:
        o = torch.stack(outs)  # [B, T, H, V]
    else:
        o = torch.cat(outs, dim=0).unsqueeze(0)  # [1, T, H, V]
    return o.to(v.dtype), torch.stack(finals)
