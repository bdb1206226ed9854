"""Spark-Attention in Triton, flash-style: forward and backward kernels in one ``torch.autograd.Function``.

Sequences are described by two offset tables (queries ``cuq``, keys ``cuk``; query i of a sequence sits at
key position ``k_len - q_len + i``, which covers a KV-cache prefix and packed sequences alike) and a table of
(sequence, tile) pairs, so one launch serves dense batches and ``cu_seqlens``.

forward  ``_fwd``  per (query tile of BM rows, head), two sweeps over the visible key tiles:
         1. statistics of the predictor scores s1 = scale·q[:r]·k[:r] per row: count, mean and centred sum of
            squares per tile, merged across tiles with Chan's update; the row max. Gives the threshold
            t = min(mean + std·z[n], max) when n > top_k (z[n] = Φ⁻¹(1 - top_k/n) from a small table), else -∞.
         2. online softmax of s1 over the keys with s1 ≥ t, each weighted by softplus(s2), s2 = scale·q[r:]·k[r:].
         Stores o, the row log-sum-exp of the selected s1, and t.
backward ``δ_i = do_i·o_i`` (torch), then with p = exp(s1 - lse) on the selected keys, c = do·vᵀ:
         ds1 = p ⊙ (softplus(s2) ⊙ c - δ),  ds2 = p ⊙ c ⊙ sigmoid(s2),  dv = (p ⊙ softplus(s2))ᵀ do
         ``_bwd_dkv`` per (key tile, kv head) loops over the heads of its group and the query tiles that see
         it: dk[:r] = scale·ds1ᵀ q[:r], dk[r:] = scale·ds2ᵀ q[r:], dv. ``_bwd_dq`` per (query tile, head): dq.
         The threshold is a step function of the scores: no gradient flows through it. No atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreter_active, next_power_of_2
from .._triton_utils import dot as _dot
from ..statistical_topk.reference import TINY_VAR
from .reference import z_table

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": "select every visible key" and empty rows stay finite


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _seq(cuq, cuk, tab, i_t):
    i_n = tl.load(tab + 2 * i_t).to(tl.int64)
    tile = tl.load(tab + 2 * i_t + 1).to(tl.int64)
    q_bos = tl.load(cuq + i_n).to(tl.int64)
    q_len = tl.load(cuq + i_n + 1).to(tl.int64) - q_bos
    k_bos = tl.load(cuk + i_n).to(tl.int64)
    k_len = tl.load(cuk + i_n + 1).to(tl.int64) - k_bos
    return tile, q_bos, q_len, k_bos, k_len


@triton.jit
def _load_rows(ptr, rows, m_rows, stride, col0, ncols, BC: tl.constexpr):
    c = tl.arange(0, BC)
    return tl.load(ptr + rows[:, None] * stride + col0 + c[None, :], mask=m_rows[:, None] & (c[None, :] < ncols),
                   other=0.0)


@triton.jit
def _visible(r_q, pos, q_len, r_k, k_len, km, k_bos, HAS_KM: tl.constexpr):
    vis = (r_k[None, :] <= pos[:, None]) & (r_k[None, :] < k_len) & (r_q[:, None] < q_len)
    if HAS_KM:
        keep = tl.load(km + k_bos + r_k, mask=r_k < k_len, other=0)
        vis = vis & (keep[None, :] != 0)
    return vis


@triton.jit
def _fwd(q, k, v, o, lse, thr, km, ztab, cuq, cuk, tab, scale, top_k, tiny,
         H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, R: tl.constexpr, DV: tl.constexpr,
         BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BR2: tl.constexpr, BDV: tl.constexpr,
         HAS_KM: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    i_hk = i_h // (H // HKV)
    tile, q_bos, q_len, k_bos, k_len = _seq(cuq, cuk, tab, i_t)
    off = k_len - q_len
    r_q = tile * BM + tl.arange(0, BM)
    m_q = r_q < q_len
    pos = off + r_q
    q_rows = (q_bos + r_q) * H + i_h
    b_q1 = _load_rows(q, q_rows, m_q, D, 0, R, BR)
    b_q2 = _load_rows(q, q_rows, m_q, D, R, D - R, BR2)
    k_end = tl.minimum(k_len, off + tl.minimum(tile * BM + BM, q_len))
    # 1. statistics of the visible predictor scores, per query row
    b_n = tl.zeros([BM], dtype=tl.float32)
    b_mean = tl.zeros([BM], dtype=tl.float32)
    b_m2 = tl.zeros([BM], dtype=tl.float32)
    b_max = tl.full([BM], NEG, dtype=tl.float32)
    for k0 in range(0, k_end, BN):
        r_k = k0 + tl.arange(0, BN)
        m_k = r_k < k_len
        b_k1 = _load_rows(k, (k_bos + r_k) * HKV + i_hk, m_k, D, 0, R, BR)
        b_s1 = _dot(b_q1, tl.trans(b_k1)) * scale
        vis = _visible(r_q, pos, q_len, r_k, k_len, km, k_bos, HAS_KM)
        n_t = tl.sum(vis.to(tl.float32), axis=1)
        mean_t = tl.sum(tl.where(vis, b_s1, 0.0), axis=1) / tl.maximum(n_t, 1.0)
        dev = tl.where(vis, b_s1 - mean_t[:, None], 0.0)
        m2_t = tl.sum(dev * dev, axis=1)
        n_new = b_n + n_t
        delta = mean_t - b_mean
        frac = n_t / tl.maximum(n_new, 1.0)
        b_mean = b_mean + delta * frac
        b_m2 = b_m2 + m2_t + delta * delta * b_n * frac
        b_n = n_new
        b_max = tl.maximum(b_max, tl.max(tl.where(vis, b_s1, NEG), axis=1))
    z = tl.load(ztab + b_n.to(tl.int32), mask=m_q, other=0.0)
    theta = b_mean + tl.sqrt(tl.maximum(b_m2 / tl.maximum(b_n, 1.0), tiny)) * z
    b_thr = tl.where(b_n > top_k, tl.minimum(theta, b_max), NEG)
    # 2. softmax over the selected keys, each weighted by softplus(s2)
    b_m = tl.full([BM], NEG, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BDV], dtype=tl.float32)
    for k0 in range(0, k_end, BN):
        r_k = k0 + tl.arange(0, BN)
        m_k = r_k < k_len
        k_rows = (k_bos + r_k) * HKV + i_hk
        b_k1 = _load_rows(k, k_rows, m_k, D, 0, R, BR)
        b_k2 = _load_rows(k, k_rows, m_k, D, R, D - R, BR2)
        b_v = _load_rows(v, k_rows, m_k, DV, 0, DV, BDV)
        b_s1 = _dot(b_q1, tl.trans(b_k1)) * scale
        b_s2 = _dot(b_q2, tl.trans(b_k2)) * scale
        vis = _visible(r_q, pos, q_len, r_k, k_len, km, k_bos, HAS_KM)
        sel = vis & (b_s1 >= b_thr[:, None])
        m_new = tl.maximum(b_m, tl.max(tl.where(sel, b_s1, NEG), axis=1))
        alpha = tl.exp(b_m - m_new)
        b_p = tl.where(sel, tl.exp(tl.where(sel, b_s1 - m_new[:, None], NEG)), 0.0)
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_w = b_p * _softplus(b_s2)
        b_acc = b_acc * alpha[:, None] + _dot(b_w.to(b_v.dtype), b_v)
        b_m = m_new
    has = b_l > 0.0
    b_o = b_acc / tl.where(has, b_l, 1.0)[:, None]
    c_dv = tl.arange(0, BDV)
    tl.store(o + q_rows[:, None] * DV + c_dv[None, :], b_o.to(o.dtype.element_ty),
             mask=m_q[:, None] & (c_dv[None, :] < DV))
    tl.store(lse + q_rows, tl.where(has, b_m + tl.log(tl.where(has, b_l, 1.0)), 0.0), mask=m_q)
    tl.store(thr + q_rows, b_thr, mask=m_q)


@triton.jit
def _grads(b_q1, b_q2, b_k1, b_k2, b_v, b_do, b_lse, b_thr, b_delta, vis, scale):
    """For a [BM(queries), BN(keys)] tile: the value weights p·softplus(s2) and the score gradients."""
    b_s1 = _dot(b_q1, tl.trans(b_k1)) * scale
    b_s2 = _dot(b_q2, tl.trans(b_k2)) * scale
    sel = vis & (b_s1 >= b_thr[:, None])
    b_p = tl.where(sel, tl.exp(tl.where(sel, b_s1 - b_lse[:, None], NEG)), 0.0)
    b_c = _dot(b_do, tl.trans(b_v))
    sp = _softplus(b_s2)
    b_ds1 = b_p * (sp * b_c - b_delta[:, None])
    b_ds2 = b_p * b_c * tl.sigmoid(b_s2)
    return b_p * sp, b_ds1, b_ds2


@triton.jit
def _bwd_dkv(q, k, v, do, lse, thr, delta, km, dk, dv, cuq, cuk, tab, scale,
             H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, R: tl.constexpr, DV: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BR2: tl.constexpr, BDV: tl.constexpr,
             HAS_KM: tl.constexpr):
    i_t, i_hk = tl.program_id(0), tl.program_id(1)
    tile, q_bos, q_len, k_bos, k_len = _seq(cuq, cuk, tab, i_t)
    off = k_len - q_len
    r_k = tile * BN + tl.arange(0, BN)
    m_k = r_k < k_len
    k_rows = (k_bos + r_k) * HKV + i_hk
    b_k1 = _load_rows(k, k_rows, m_k, D, 0, R, BR)
    b_k2 = _load_rows(k, k_rows, m_k, D, R, D - R, BR2)
    b_v = _load_rows(v, k_rows, m_k, DV, 0, DV, BDV)
    b_dk1 = tl.zeros([BN, BR], dtype=tl.float32)
    b_dk2 = tl.zeros([BN, BR2], dtype=tl.float32)
    b_dv = tl.zeros([BN, BDV], dtype=tl.float32)
    q_lo = tl.maximum(tile * BN - off, 0)
    q_lo = (q_lo // BM) * BM
    for g in range(0, H // HKV):
        i_h = i_hk * (H // HKV) + g
        for s0 in range(q_lo, q_len, BM):
            r_q = s0 + tl.arange(0, BM)
            m_q = r_q < q_len
            q_rows = (q_bos + r_q) * H + i_h
            b_q1 = _load_rows(q, q_rows, m_q, D, 0, R, BR)
            b_q2 = _load_rows(q, q_rows, m_q, D, R, D - R, BR2)
            b_do = _load_rows(do, q_rows, m_q, DV, 0, DV, BDV)
            b_lse = tl.load(lse + q_rows, mask=m_q, other=0.0)
            b_thr = tl.load(thr + q_rows, mask=m_q, other=0.0)
            b_delta = tl.load(delta + q_rows, mask=m_q, other=0.0)
            vis = _visible(r_q, off + r_q, q_len, r_k, k_len, km, k_bos, HAS_KM)
            b_w, b_ds1, b_ds2 = _grads(b_q1, b_q2, b_k1, b_k2, b_v, b_do, b_lse, b_thr, b_delta, vis, scale)
            b_dv += _dot(tl.trans(b_w.to(b_do.dtype)), b_do)
            b_dk1 += _dot(tl.trans(b_ds1.to(b_q1.dtype)), b_q1)
            b_dk2 += _dot(tl.trans(b_ds2.to(b_q2.dtype)), b_q2)
    c1, c2, c_dv = tl.arange(0, BR), tl.arange(0, BR2), tl.arange(0, BDV)
    tl.store(dk + k_rows[:, None] * D + c1[None, :], (b_dk1 * scale).to(dk.dtype.element_ty),
             mask=m_k[:, None] & (c1[None, :] < R))
    tl.store(dk + k_rows[:, None] * D + R + c2[None, :], (b_dk2 * scale).to(dk.dtype.element_ty),
             mask=m_k[:, None] & (c2[None, :] < D - R))
    tl.store(dv + k_rows[:, None] * DV + c_dv[None, :], b_dv.to(dv.dtype.element_ty),
             mask=m_k[:, None] & (c_dv[None, :] < DV))


@triton.jit
def _bwd_dq(q, k, v, do, lse, thr, delta, km, dq, cuq, cuk, tab, scale,
            H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, R: tl.constexpr, DV: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BR2: tl.constexpr, BDV: tl.constexpr,
            HAS_KM: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    i_hk = i_h // (H // HKV)
    tile, q_bos, q_len, k_bos, k_len = _seq(cuq, cuk, tab, i_t)
    off = k_len - q_len
    r_q = tile * BM + tl.arange(0, BM)
    m_q = r_q < q_len
    q_rows = (q_bos + r_q) * H + i_h
    b_q1 = _load_rows(q, q_rows, m_q, D, 0, R, BR)
    b_q2 = _load_rows(q, q_rows, m_q, D, R, D - R, BR2)
    b_do = _load_rows(do, q_rows, m_q, DV, 0, DV, BDV)
    b_lse = tl.load(lse + q_rows, mask=m_q, other=0.0)
    b_thr = tl.load(thr + q_rows, mask=m_q, other=0.0)
    b_delta = tl.load(delta + q_rows, mask=m_q, other=0.0)
    b_dq1 = tl.zeros([BM, BR], dtype=tl.float32)
    b_dq2 = tl.zeros([BM, BR2], dtype=tl.float32)
    k_end = tl.minimum(k_len, off + tl.minimum(tile * BM + BM, q_len))
    for k0 in range(0, k_end, BN):
        r_k = k0 + tl.arange(0, BN)
        m_k = r_k < k_len
        k_rows = (k_bos + r_k) * HKV + i_hk
        b_k1 = _load_rows(k, k_rows, m_k, D, 0, R, BR)
        b_k2 = _load_rows(k, k_rows, m_k, D, R, D - R, BR2)
        b_v = _load_rows(v, k_rows, m_k, DV, 0, DV, BDV)
        vis = _visible(r_q, off + r_q, q_len, r_k, k_len, km, k_bos, HAS_KM)
        b_w, b_ds1, b_ds2 = _grads(b_q1, b_q2, b_k1, b_k2, b_v, b_do, b_lse, b_thr, b_delta, vis, scale)
        b_dq1 += _dot(b_ds1.to(b_k1.dtype), b_k1)
        b_dq2 += _dot(b_ds2.to(b_k2.dtype), b_k2)
    c1, c2 = tl.arange(0, BR), tl.arange(0, BR2)
    tl.store(dq + q_rows[:, None] * D + c1[None, :], (b_dq1 * scale).to(dq.dtype.element_ty),
             mask=m_q[:, None] & (c1[None, :] < R))
    tl.store(dq + q_rows[:, None] * D + R + c2[None, :], (b_dq2 * scale).to(dq.dtype.element_ty),
             mask=m_q[:, None] & (c2[None, :] < D - R))


def _tables(cuq, cuk, tile, which):
    """Tile table [(sequence, tile)] over the queries (``which == "q"``) or the keys, int32 [n_tiles, 2]."""
    lens = (cuq if which == "q" else cuk).diff().tolist()
    rows = [(n, t) for n, length in enumerate(lens) for t in range(-(-length // tile))]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 2).to(cuq.device)


def _tile_sizes():
    return (32, 32) if interpreter_active() else (64, 64)


class _SparkAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, r, top_k, scale, cu_seqlens, key_mask):
        B, Tq, H, D = q.shape
        Tk, HKV, DV = k.shape[1], k.shape[2], v.shape[-1]
        dev = q.device
        if cu_seqlens is None:
            cuq = torch.arange(B + 1, device=dev, dtype=torch.int32) * Tq
            cuk = torch.arange(B + 1, device=dev, dtype=torch.int32) * Tk
        else:
            cuq = cuk = cu_seqlens.to(torch.int32)
        BM, BN = _tile_sizes()
        tab = _tables(cuq, cuk, BM, "q")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        km = key_mask.reshape(-1).to(torch.int8).contiguous() if key_mask is not None else cuq
        ztab = z_table(top_k, Tk, dev)
        o = torch.empty(B, Tq, H, DV, device=dev, dtype=q.dtype)
        lse = torch.empty(B, Tq, H, device=dev, dtype=torch.float32)
        thr = torch.empty(B, Tq, H, device=dev, dtype=torch.float32)
        meta = dict(H=H, HKV=HKV, D=D, R=r, DV=DV, BM=BM, BN=BN, BR=max(16, next_power_of_2(r)),
                    BR2=max(16, next_power_of_2(D - r)), BDV=max(16, next_power_of_2(DV)),
                    HAS_KM=key_mask is not None)
        if tab.shape[0] > 0:
            _fwd[(tab.shape[0], H)](q, k, v, o, lse, thr, km, ztab, cuq, cuk, tab, scale, top_k, TINY_VAR, **meta)
        ctx.save_for_backward(q, k, v, o, lse, thr, km, cuq, cuk)
        ctx.meta, ctx.scale = meta, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, thr, km, cuq, cuk = ctx.saved_tensors
        meta = ctx.meta
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1)  # [B, Tq, H]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        tabk = _tables(cuq, cuk, meta["BN"], "k")
        tabq = _tables(cuq, cuk, meta["BM"], "q")
        if tabk.shape[0] > 0:
            _bwd_dkv[(tabk.shape[0], meta["HKV"])](q, k, v, do, lse, thr, delta, km, dk, dv, cuq, cuk, tabk,
                                                   ctx.scale, **meta)
        else:
            dk.zero_(), dv.zero_()
        if tabq.shape[0] > 0:
            _bwd_dq[(tabq.shape[0], meta["H"])](q, k, v, do, lse, thr, delta, km, dq, cuq, cuk, tabq,
                                               ctx.scale, **meta)
        return dq, dk, dv, None, None, None, None, None


def spark_attention_triton(q, k, v, predictor_dims, top_k=256, scale=None, cu_seqlens=None, key_mask=None):
    if not (q.is_cuda or interpreter_active()):
        raise ValueError("spark_attention: the triton backend needs CUDA tensors or TRITON_INTERPRET=1")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _SparkAttention.apply(q, k, v, predictor_dims, top_k, float(scale), cu_seqlens, key_mask)
