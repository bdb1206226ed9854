"""Block attention in plain PyTorch: reshape into blocks, two batched matmuls. O(T·w·d) time and memory.

The sequence (each packed sequence with ``cu_seqlens``) is zero-padded to a multiple of ``w`` and viewed as
``[N, T/w, w, H, D]``; the only mask is a ``[w, w]`` one plus the padding of the last block.
"""

from __future__ import annotations

import torch

from .._chunk import pack_varlen, pad_time, seq_lens, unpack_varlen, unpad_time


def block_attention_torch(q, k, v, block_size=64, causal=True, activation="softmax", scale=None,
                          cu_seqlens=None, cu_seqlens_cpu=None):
    """Inputs already checked. Dense inputs read nothing back from the device (``torch.compile`` traces them
    whole); packed ones take the longest length from ``cu_seqlens_cpu`` when given."""
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    w = block_size
    scale = D ** -0.5 if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    if cu_seqlens is None:
        qf, kf, vf = (pad_time(x, w) for x in (qf, kf, vf))
        lengths = torch.full((B,), T, dtype=torch.long, device=q.device)
    else:
        longest = None
        if cu_seqlens_cpu is not None:
            longest = int(seq_lens(cu_seqlens_cpu).max()) if cu_seqlens_cpu.numel() > 1 else 0
        qf, kf, vf = (unpack_varlen(x, cu_seqlens, multiple=w, longest=longest) for x in (qf, kf, vf))
        lengths = seq_lens(cu_seqlens).long()
    N, Tp = qf.shape[:2]
    nb = Tp // w
    # [N, H, nb, w, D]
    qb = qf.view(N, nb, w, H, D).permute(0, 3, 1, 2, 4)
    kb = kf.view(N, nb, w, H, D).permute(0, 3, 1, 2, 4)
    vb = vf.view(N, nb, w, H, Dv).permute(0, 3, 1, 2, 4)
    s = scale * (qb @ kb.transpose(-1, -2))  # [N, H, nb, w, w]
    pos = torch.arange(w, device=q.device)
    key_pos = torch.arange(Tp, device=q.device).view(nb, w)  # position of every key in its sequence
    real = key_pos[None] < lengths[:, None, None]  # [N, nb, w]
    visible = real[:, None, :, None, :]  # [N, 1, nb, 1, w]
    if causal:
        visible = visible & (pos[:, None] >= pos[None, :])  # [N, 1, nb, w, w]
    # padded query rows (cut off below) see every key, so no softmax row is empty
    visible = visible | ~real[:, None, :, :, None]
    if activation == "softmax":
        p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    else:
        p = torch.relu(s) * visible
    o = (p @ vb).permute(0, 2, 3, 1, 4).reshape(N, Tp, H, Dv)  # [N, Tp, H, Dv]
    o = unpad_time(o, T) if cu_seqlens is None else pack_varlen(o, cu_seqlens)
    return o.to(q.dtype)
