"""Attention inside non-overlapping blocks (chunks) of tokens: the padding and cache logic every block-local
mixer needs, written once (TransNormer's DiagAttention, MEGA's and TCNCA's chunked gated attention).

``attend(q, k, v, cu_seqlens) -> o`` is the mixer's attention restricted to blocks (usually
``seqzoo.kernels.block_attention``); :func:`attend_in_blocks` runs it on

- a plain batch: directly;
- a padded batch (``attention_mask``, left or right padding): each row's real tokens as one packed sequence,
  so blocks start at its first real token, exactly as without padding; pads get zeros;
- a cached decode/prefill step (``state``, the layer's cache dict): the keys and values of each row's
  unfinished block go in front of its new tokens, so the row's piece starts at a block boundary; the block
  that is still open afterwards is kept in ``state`` (``k``, ``v`` ``[B, w, H, D]``, ``n`` ``[B]`` rows used).

``block_size=None`` means one block for the whole sequence (full attention): the cache then keeps every key.
"""

from __future__ import annotations

import torch

from . import padding


def attend_in_blocks(attend, q, k, v, block_size: int | None, attention_mask=None, state=None, cu_seqlens=None):
    """q, k: ``[B, T, H, D]``, v: ``[B, T, H, Dv]`` -> ``o [B, T, H, Dv]`` (see the module docstring).
    ``attention_mask`` is ``[B, T]`` for the new tokens (1 = token)."""
    if state is not None:
        if cu_seqlens is not None:
            raise ValueError("attend_in_blocks: cu_seqlens (packed sequences) cannot be combined with a cache")
        return _cached(attend, q, k, v, block_size, attention_mask, state)
    if attention_mask is not None:
        packed = padding.pack(attention_mask)
        o = attend(packed.pack(q), packed.pack(k), packed.pack(v), packed.cu_seqlens)  # [1, N, H, Dv]
        return packed.unpack(o)
    return attend(q, k, v, cu_seqlens)


def _cached(attend, q, k, v, w, attention_mask, state):
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    if "k" not in state:
        state["k"] = k.new_zeros(B, 0 if w is None else w, H, D)  # [B, w, H, D]: the first n[b] rows are used
        state["v"] = v.new_zeros(B, 0 if w is None else w, H, Dv)
        state["n"] = torch.zeros(B, dtype=torch.long, device=q.device)
    real = (attention_mask.bool() if attention_mask is not None
            else torch.ones(B, T, dtype=torch.bool, device=q.device))
    o = q.new_zeros(B, T, H, Dv)
    kept = []
    for b in range(B):
        n = int(state["n"][b])
        kb = torch.cat([state["k"][b, :n].to(k.dtype), k[b][real[b]]])  # [n + r, H, D]
        vb = torch.cat([state["v"][b, :n].to(v.dtype), v[b][real[b]]])
        r = kb.shape[0] - n
        if r > 0:
            qb = torch.cat([q.new_zeros(n, H, D), q[b][real[b]]])  # the buffered rows' outputs are dropped
            o[b][real[b]] = attend(qb[None], kb[None], vb[None], None)[0, n:]
        keep = kb.shape[0] if w is None else kb.shape[0] % w  # tokens of the block that is still open
        kept.append((kb[kb.shape[0] - keep:], vb[vb.shape[0] - keep:]))
    rows = max(len(kk) for kk, _ in kept) if w is None else w
    new_k, new_v = k.new_zeros(B, rows, H, D), v.new_zeros(B, rows, H, Dv)
    for b, (kk, vv) in enumerate(kept):
        new_k[b, :len(kk)] = kk
        new_v[b, :len(vv)] = vv
    state["k"], state["v"] = new_k, new_v
    state["n"] = torch.tensor([len(kk) for kk, _ in kept], dtype=torch.long, device=q.device)
    return o
