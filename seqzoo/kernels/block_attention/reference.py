"""Block-diagonal attention, one block at a time in fp32: the ground truth.

Token ``t`` of a sequence belongs to block ``t // w``. For a query ``i`` the visible keys are those of its own
block (and ``j ≤ i`` when causal); with ``s_ij = scale · q_i·k_j``:

    softmax:  o_i = Σ_j softmax_j(s_ij) v_j
    relu:     o_i = Σ_j relu(s_ij) v_j          (ReLA-style: no normalization; the layer normalizes o)
"""

from __future__ import annotations

import torch


def _attend(q, k, v, scale, causal, activation):
    # q, k: [n, H, D]; v: [n, H, Dv] -- one block
    s = scale * torch.einsum("ihd,jhd->hij", q, k)  # [H, n, n]
    n = q.shape[0]
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.tril(visible)
    if activation == "softmax":
        p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    else:
        p = torch.relu(s) * visible
    return torch.einsum("hij,jhd->ihd", p, v)  # [n, H, Dv]


def block_attention_reference(q, k, v, block_size=64, causal=True, activation="softmax", scale=None,
                              cu_seqlens=None):
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float32, device=q.device)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        cs = cu_seqlens.tolist()
        spans = [(0, cs[i], cs[i + 1]) for i in range(len(cs) - 1)]
    rows = []
    for b, s, e in spans:
        for start in range(s, e, block_size):
            stop = min(start + block_size, e)
            rows.append((b, start, stop, _attend(qf[b, start:stop], kf[b, start:stop], vf[b, start:stop],
                                                 scale, causal, activation)))
    # out-of-place assembly keeps autograd simple
    parts = {}
    for b, start, stop, ob in rows:
        parts.setdefault(b, []).append(ob)
    o = torch.stack([torch.cat(parts[b], 0) for b in range(B)], 0) if cu_seqlens is None else \
        torch.cat(parts[0], 0)[None]
    return o.to(q.dtype)
