"""Spark-Attention in plain PyTorch: query chunks of C rows against the keys they can see, never [T, T].

Per chunk (and per group of query heads sharing a kv head), the predictor scores ``s1 [C, S]`` give each
row's count, mean, std and max of the visible scores (no gradient: the selection is a step function), the
threshold picks the keys, and the selected softmax times ``softplus(s2)`` weights the values. Memory is
O(C·T) per chunk; under autograd each chunk is checkpointed (recomputed in the backward), so the saved
activations are the inputs and the outputs only, not a [T, T] matrix summed over chunks. Inputs with at
most ``SMALL_SCORES`` scores in all run as one chunk without checkpointing (recomputing is not worth it there).

:func:`spark_attention_decode` is the one-token path for generation: the predictor scores read the first r
dims of every cached key (kept as their own contiguous tensor), then only the selected keys' remaining dims
and values are gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..statistical_topk import quantile_multiplier
from ..statistical_topk.reference import TINY_VAR
from .native import spark_attention_decode_native
from .reference import z_table

# below this many scores (B·H·Tq·Tk; 64 MiB in fp32) the whole score matrix is one chunk and autograd keeps it;
# above it, chunks of ``chunk_size`` queries are checkpointed so memory stays O(chunk·T)
SMALL_SCORES = 1 << 24


def _thresholds(s1, vis, ztab, top_k):
    """Per row of ``s1 [..., C, S]`` (visible where ``vis``): the effective threshold t_i (see reference)."""
    n = vis.sum(-1, keepdim=True)
    nc = n.clamp_min(1)
    s1v = s1.masked_fill(~vis, 0.0)
    mean = s1v.sum(-1, keepdim=True) / nc
    var = (s1v - mean).masked_fill(~vis, 0.0).square().sum(-1, keepdim=True) / nc
    theta = mean + var.clamp_min(TINY_VAR).sqrt() * ztab[n]
    row_max = s1.masked_fill(~vis, float("-inf")).amax(-1, keepdim=True)
    return torch.where(n > top_k, torch.minimum(theta, row_max), torch.full_like(theta, float("-inf")))


def _chunk(qc, kc, vc, vis, ztab, r, top_k, scale):
    # qc [B, Hkv, G, C, D]; kc [B, Hkv, 1, S, D]; vc [B, Hkv, 1, S, Dv]; vis [B, 1, 1, C, S]
    s1 = (qc[..., :r] @ kc[..., :r].transpose(-1, -2)) * scale  # [B, Hkv, G, C, S]
    with torch.no_grad():
        thr = _thresholds(s1.detach(), vis, ztab, top_k)
        selected = vis & (s1.detach() >= thr)
    p = torch.softmax(s1.masked_fill(~selected, float("-inf")), dim=-1)
    p = p.masked_fill(~selected, 0.0)  # a row with no visible key: zeros instead of NaN
    s2 = (qc[..., r:] @ kc[..., r:].transpose(-1, -2)) * scale
    return (p * F.softplus(s2)) @ vc  # [B, Hkv, G, C, Dv]


def spark_attention_torch(q, k, v, predictor_dims, top_k=256, scale=None, cu_seqlens=None, key_mask=None,
                          chunk_size=64):
    B, Tq, H, D = q.shape
    Tk, Hkv, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    r = predictor_dims
    scale = D**-0.5 if scale is None else scale
    qh = q.float().view(B, Tq, Hkv, G, D).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, Tq, D]
    kh = k.float().permute(0, 2, 1, 3)[:, :, None]  # [B, Hkv, 1, Tk, D]
    vh = v.float().permute(0, 2, 1, 3)[:, :, None]  # [B, Hkv, 1, Tk, Dv]
    ztab = z_table(top_k, Tk, q.device)
    seq = None
    if cu_seqlens is not None:
        seq = torch.bucketize(torch.arange(Tk, device=q.device), cu_seqlens.to(q.device)[1:], right=True)
    offset = Tk - Tq
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if B * H * Tq * Tk <= SMALL_SCORES:  # short inputs: one chunk, no recomputation in the backward
        chunk_size, grad = Tq, False
    outs = []
    for c0 in range(0, Tq, chunk_size):
        c1 = min(c0 + chunk_size, Tq)
        S = offset + c1  # keys visible to the chunk's last query
        q_pos = offset + torch.arange(c0, c1, device=q.device)
        vis = torch.arange(S, device=q.device)[None, :] <= q_pos[:, None]  # [C, S]
        if seq is not None:
            vis = vis & (seq[q_pos][:, None] == seq[None, :S])
        vis = vis[None].expand(B, -1, -1)
        if key_mask is not None:
            vis = vis & key_mask[:, None, :S].bool()
        vis = vis[:, None, None]  # [B, 1, 1, C, S]
        args = (qh[:, :, :, c0:c1], kh[:, :, :, :S], vh[:, :, :, :S], vis, ztab, r, top_k, scale)
        outs.append(checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args))
    o = torch.cat(outs, dim=3)  # [B, Hkv, G, Tq, Dv]
    return o.permute(0, 3, 1, 2, 4).reshape(B, Tq, H, Dv).to(q.dtype)


def spark_attention_decode(q, k1, k2, v, top_k=256, scale=None, key_mask=None):
    """One new query per sequence against a split KV cache (no autograd; the generation path).

    Args:
        q: ``[B, H, D]`` the new token's queries (D = r + D2), at the position of the last cached key.
        k1: ``[B, Hkv, T, r]`` the cached keys' predictor dims; k2: ``[B, Hkv, T, D2]`` their other dims;
        v: ``[B, Hkv, T, Dv]``; key_mask: optional ``[B, T]`` (False: a padding key). The caches may be views
        with any batch and head strides (rows of the last dim contiguous), as ``ZooCache.append`` keeps them.
    Returns:
        ``[B, H, Dv]`` in q's dtype.
    """
    B, H, D = q.shape
    Hkv, T, r = k1.shape[1], k1.shape[2], k1.shape[3]
    G = H // Hkv
    scale = D**-0.5 if scale is None else scale
    qg = q.view(B, Hkv, G, D).to(k1.dtype)
    s1 = (qg[..., :r] @ k1.transpose(-1, -2)).float() * scale  # [B, Hkv, G, T]: reads only r dims per key
    if key_mask is None and T > 0:  # the C kernel does the rest in one call when it can
        z = 0.0 if T <= top_k else quantile_multiplier(top_k, T)
        o = spark_attention_decode_native(s1, qg[..., r:], k2, v, z, T <= top_k, scale)
        if o is not None:
            return o.reshape(B, H, -1).to(q.dtype)
    if key_mask is None and T <= top_k:  # every key is selected: plain softmax over s1
        k2s, vs = k2[:, :, None], v[:, :, None]  # [B, Hkv, 1, T, *]
        logits = s1
    else:
        if key_mask is None:  # every key visible: the statistics of whole rows (no masking passes)
            mean = s1.mean(-1, keepdim=True)
            var = (s1 - mean).square_().mean(-1, keepdim=True)
            theta = mean + var.clamp_min_(TINY_VAR).sqrt_() * _z(top_k, T, q.device)
            thr = torch.minimum(theta, s1.amax(-1, keepdim=True))
            sel = s1 >= thr
        else:
            vis = key_mask.bool()[:, None, None, :].expand_as(s1)
            thr = _thresholds(s1, vis, z_table(top_k, T, q.device), top_k)
            sel = vis & (s1 >= thr)
        idx, valid = _selected_positions(sel)  # [B, Hkv, G, K]
        K = idx.shape[-1]
        flat = idx.view(B, Hkv, G * K)
        k2s = _take_rows(k2, flat).view(B, Hkv, G, K, k2.shape[-1])
        vs = _take_rows(v, flat).view(B, Hkv, G, K, v.shape[-1])
        logits = s1.gather(-1, idx).masked_fill_(~valid, float("-inf"))
    p = torch.softmax(logits, dim=-1)  # [B, Hkv, G, K]
    s2 = (k2s @ qg[..., r:, None].to(k2s.dtype)).squeeze(-1).float() * scale  # [B, Hkv, G, K]
    w = (p * F.softplus(s2)).to(vs.dtype)
    o = (w[..., None, :] @ vs).squeeze(-2)  # [B, Hkv, G, Dv]
    return o.reshape(B, H, -1).to(q.dtype)


def _z(top_k, n, device):
    """``z_table(top_k, n)[n]`` alone (the same float64 arithmetic), without building the table."""
    return torch.special.ndtri(torch.tensor(1.0 - top_k / n, dtype=torch.float64)).float().to(device)


def _selected_positions(sel):
    """``sel [..., T]`` bool -> ``(idx, valid)`` ``[..., K]``, K = the most selected in a row: each row's selected
    positions, padded with position 0 (``valid`` False). One ``nonzero`` and a scatter: ~2x faster than
    ``topk`` over the scores on CPU."""
    shape, T = sel.shape[:-1], sel.shape[-1]
    R = sel.numel() // max(T, 1)
    flat = sel.reshape(-1).nonzero().squeeze(1)  # row-major: a row's positions in order
    row = flat // T
    col = flat - row * T
    counts = torch.bincount(row, minlength=R)
    K = max(int(counts.max()), 1) if R else 1
    pos = torch.arange(flat.shape[0], device=sel.device) - (counts.cumsum(0) - counts)[row]
    idx = torch.zeros(R, K, dtype=torch.long, device=sel.device)
    valid = torch.zeros(R, K, dtype=torch.bool, device=sel.device)
    idx[row, pos] = col
    valid[row, pos] = True
    return idx.view(*shape, K), valid.view(*shape, K)


def _take_rows(x, idx):
    """``x [B, Hkv, T, E]``, ``idx [B, Hkv, M]`` -> ``x[b, h, idx[b, h, m]]`` ``[B, Hkv, M, E]``.

    When x's rows are contiguous and its batch / head strides are whole rows (a contiguous tensor or a cache
    view), one ``index_select`` of whole rows on a flat row view: ~3x faster than ``torch.gather`` on CPU."""
    B, Hkv, T, E = x.shape
    sb, sh, st, se = x.stride()
    if se != 1 or st != E or sb % E or sh % E:
        return x.gather(2, idx[..., None].expand(-1, -1, -1, E))
    first = (torch.arange(B, device=x.device)[:, None] * (sb // E)
             + torch.arange(Hkv, device=x.device)[None, :] * (sh // E))  # [B, Hkv]: the row of (b, h, 0)
    n_rows = (B - 1) * (sb // E) + (Hkv - 1) * (sh // E) + T
    rows = x.as_strided((n_rows, E), (E, 1))  # every row x's (b, h, t) can name, at x's storage offset
    return rows.index_select(0, (first[..., None] + idx).reshape(-1)).view(B, Hkv, -1, E)


@torch.no_grad()
def selection_counts(q, k, predictor_dims, top_k=256, scale=None, cu_seqlens=None, key_mask=None, chunk_size=64):
    """How many keys each query selects and sees: ``(selected, visible)``, both int64 ``[B, Tq, H]``, for the
    sparsity report (the same selection rule as :func:`spark_attention_torch`, chunked, no values)."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G, r = H // Hkv, predictor_dims
    scale = D**-0.5 if scale is None else scale
    qh = q.float()[..., :r].reshape(B, Tq, Hkv, G, r).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, Tq, r]
    kh = k.float()[..., :r].permute(0, 2, 1, 3)[:, :, None]  # [B, Hkv, 1, Tk, r]
    ztab = z_table(top_k, Tk, q.device)
    seq = None
    if cu_seqlens is not None:
        seq = torch.bucketize(torch.arange(Tk, device=q.device), cu_seqlens.to(q.device)[1:], right=True)
    offset = Tk - Tq
    sel_counts, vis_counts = [], []
    for c0 in range(0, Tq, chunk_size):
        c1 = min(c0 + chunk_size, Tq)
        S = offset + c1
        q_pos = offset + torch.arange(c0, c1, device=q.device)
        vis = torch.arange(S, device=q.device)[None, :] <= q_pos[:, None]
        if seq is not None:
            vis = vis & (seq[q_pos][:, None] == seq[None, :S])
        vis = vis[None].expand(B, -1, -1)
        if key_mask is not None:
            vis = vis & key_mask[:, None, :S].bool()
        vis = vis[:, None, None]  # [B, 1, 1, C, S]
        s1 = (qh[:, :, :, c0:c1] @ kh[:, :, :, :S].transpose(-1, -2)) * scale  # [B, Hkv, G, C, S]
        vis = vis.expand_as(s1)
        thr = _thresholds(s1, vis, ztab, top_k)
        sel_counts.append((vis & (s1 >= thr)).sum(-1))
        vis_counts.append(vis.sum(-1))
    def to_bth(x):  # [B, Hkv, G, Tq] -> [B, Tq, H]
        return x.permute(0, 3, 1, 2).reshape(B, Tq, H)
    return to_bth(torch.cat(sel_counts, -1)), to_bth(torch.cat(vis_counts, -1))
