"""Block-diagonal attention in Triton: forward and backward kernels in one ``torch.autograd.Function``.

Each sequence is cut into query tiles of ``BM`` rows (``BM = min(64, w)`` rounded to a power of two, ≥ 16).
A query tile only visits the key tiles of the block(s) its rows belong to, so the work is O(T·w·d); the mask
is computed from positions (``block(i) == block(j)``, ``j ≤ i`` when causal, ``j < len``), never stored.

forward  ``_fwd``   per (query tile, head): flash-style online softmax over the block's key tiles; stores
                    ``o`` and the row log-sum-exp (softmax) for the backward. ReLU: ``Σ_j relu(s_ij) v_j``.
backward ``_bwd_dkv`` per (key tile, head): loops over the query tiles of the same block(s): dk, dv.
         ``_bwd_dq``  per (query tile, head): loops over the key tiles: dq.
         (softmax) ``delta_i = do_i·o_i`` is one fused torch reduction before them.

Tiles of a dense batch are indexed directly (``chunk_locate``: sequence ``n = tile // ceil(T / BM)`` starts at
token ``n·T``), so a dense call builds no table and reads nothing back from the device; packed sequences use a
tile table built on the device. Offsets are int64; tiles are on grid x.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._chunk import ceil_div, varlen_chunk_tables
from .._triton_utils import chunk_locate
from .._triton_utils import dot as _dot

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": a fully masked (padding) row never turns into NaN
_CFG = dict(grid={}, num_warps=[4, 8], num_stages=[2])
_KEY = ["H", "D", "DV", "BM", "BD", "BDV", "CAUSAL", "RELU"]


def _prune(configs, nargs, **kw):
    """Head dims of 128 and more: 4 warps spill (compile report, sm_90); keep 8."""
    if max(kw.get("BD", 0), kw.get("BDV", 0)) >= 128:
        return [c for c in configs if c.num_warps != 4] or configs
    return configs


_PRUNE = {"early_config_prune": _prune}


def _tile(w: int) -> int:
    return max(16, min(64, next_power_of_2(w)))


@triton.jit
def _scores(b_q, b_k, r_q, r_k, n_len, w, scale, CAUSAL: tl.constexpr):
    """scale·q kᵀ for a [BM, BN] tile and the visibility mask from positions in the sequence."""
    b_s = _dot(b_q, tl.trans(b_k)) * scale
    vis = ((r_q[:, None] // w) == (r_k[None, :] // w)) & (r_k[None, :] < n_len) & (r_q[:, None] < n_len)
    if CAUSAL:
        vis = vis & (r_k[None, :] <= r_q[:, None])
    return b_s, vis


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["T"])
def _fwd(q, k, v, o, lse, cu, tab, scale, w, T,
         H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
         BDV: tl.constexpr, CAUSAL: tl.constexpr, RELU: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, bos, eos, i_tile = chunk_locate(tab, cu, i_t, BM, T, IS_VARLEN)
    n_len = eos - bos
    q0 = i_tile * BM  # first row, relative to the sequence start
    r_q = q0 + tl.arange(0, BM)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_q = r_q < n_len
    b_q = tl.load(q + (bos + r_q[:, None]) * H * D + i_h * D + o_d[None, :],
                  mask=m_q[:, None] & (o_d[None, :] < D), other=0.0)
    last = tl.minimum(q0 + BM, n_len) - 1  # last real row of the tile
    k_start = (q0 // w) * w
    k_end = tl.minimum((last // w + 1) * w, n_len)
    if CAUSAL:
        k_end = tl.minimum(k_end, last + 1)
    b_acc = tl.zeros([BM, BDV], dtype=tl.float32)
    b_m = tl.full([BM], NEG, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(k_start, k_end, BM):
        r_k = k0 + tl.arange(0, BM)
        m_k = r_k < n_len
        b_k = tl.load(k + (bos + r_k[:, None]) * H * D + i_h * D + o_d[None, :],
                      mask=m_k[:, None] & (o_d[None, :] < D), other=0.0)
        b_v = tl.load(v + (bos + r_k[:, None]) * H * DV + i_h * DV + o_dv[None, :],
                      mask=m_k[:, None] & (o_dv[None, :] < DV), other=0.0)
        b_s, vis = _scores(b_q, b_k, r_q, r_k, n_len, w, scale, CAUSAL)
        if RELU:
            b_p = tl.where(vis, tl.maximum(b_s, 0.0), 0.0)
            b_acc += _dot(b_p.to(b_v.dtype), b_v)
        else:
            b_s = tl.where(vis, b_s, NEG)
            m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
            alpha = tl.exp(b_m - m_new)
            b_p = tl.where(vis, tl.exp(b_s - m_new[:, None]), 0.0)
            b_l = b_l * alpha + tl.sum(b_p, axis=1)
            b_acc = b_acc * alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v)
            b_m = m_new
    if not RELU:
        b_l = tl.where(b_l > 0.0, b_l, 1.0)
        b_acc = b_acc / b_l[:, None]
        tl.store(lse + (bos + r_q) * H + i_h, b_m + tl.log(b_l), mask=m_q)
    tl.store(o + (bos + r_q[:, None]) * H * DV + i_h * DV + o_dv[None, :], b_acc.to(o.dtype.element_ty),
             mask=m_q[:, None] & (o_dv[None, :] < DV))


@triton.jit
def _probs_grad(b_q, b_k, b_v, b_do, b_lse, b_delta, r_q, r_k, n_len, w, scale,
                CAUSAL: tl.constexpr, RELU: tl.constexpr):
    """For a [BM(queries), BN(keys)] tile: the weights p and the gradient of the scores ds (both fp32)."""
    b_s, vis = _scores(b_q, b_k, r_q, r_k, n_len, w, scale, CAUSAL)
    b_dp = _dot(b_do, tl.trans(b_v))
    if RELU:
        b_p = tl.where(vis, tl.maximum(b_s, 0.0), 0.0)
        b_ds = tl.where(vis & (b_s > 0.0), b_dp, 0.0)
    else:
        b_p = tl.where(vis, tl.exp(b_s - b_lse[:, None]), 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
    return b_p, b_ds


@triton.jit
def _probs_grad_t(b_q, b_k, b_v, b_do, b_lse, b_delta, r_q, r_k, n_len, w, scale,
                  CAUSAL: tl.constexpr, RELU: tl.constexpr):
    """:func:`_probs_grad` transposed, a [BN(keys), BM(queries)] tile formed directly from K Q^T and V dO^T
    (no ``tl.trans`` of a dot result, a pattern Triton miscompiles on Hopper; see README.md)."""
    b_st = _dot(b_k, tl.trans(b_q)) * scale
    vis = ((r_k[:, None] // w) == (r_q[None, :] // w)) & (r_k[:, None] < n_len) & (r_q[None, :] < n_len)
    if CAUSAL:
        vis = vis & (r_k[:, None] <= r_q[None, :])
    b_dpt = _dot(b_v, tl.trans(b_do))
    if RELU:
        b_pt = tl.where(vis, tl.maximum(b_st, 0.0), 0.0)
        b_dst = tl.where(vis & (b_st > 0.0), b_dpt, 0.0)
    else:
        b_pt = tl.where(vis, tl.exp(b_st - b_lse[None, :]), 0.0)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
    return b_pt, b_dst


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["T"])
def _bwd_dkv(q, k, v, do, lse, delta, dk, dv, cu, tab, scale, w, T,
             H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
             BDV: tl.constexpr, CAUSAL: tl.constexpr, RELU: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, bos, eos, i_tile = chunk_locate(tab, cu, i_t, BM, T, IS_VARLEN)
    n_len = eos - bos
    k0 = i_tile * BM
    r_k = k0 + tl.arange(0, BM)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_k = r_k < n_len
    m_kd = m_k[:, None] & (o_d[None, :] < D)
    m_kdv = m_k[:, None] & (o_dv[None, :] < DV)
    b_k = tl.load(k + (bos + r_k[:, None]) * H * D + i_h * D + o_d[None, :], mask=m_kd, other=0.0)
    b_v = tl.load(v + (bos + r_k[:, None]) * H * DV + i_h * DV + o_dv[None, :], mask=m_kdv, other=0.0)
    last = tl.minimum(k0 + BM, n_len) - 1
    q_start = (k0 // w) * w
    if CAUSAL:
        q_start = tl.maximum(q_start, k0)
    q_end = tl.minimum((last // w + 1) * w, n_len)
    b_dk = tl.zeros([BM, BD], dtype=tl.float32)
    b_dv = tl.zeros([BM, BDV], dtype=tl.float32)
    for s0 in range(q_start, q_end, BM):
        r_q = s0 + tl.arange(0, BM)
        m_q = r_q < n_len
        b_q = tl.load(q + (bos + r_q[:, None]) * H * D + i_h * D + o_d[None, :],
                      mask=m_q[:, None] & (o_d[None, :] < D), other=0.0)
        b_do = tl.load(do + (bos + r_q[:, None]) * H * DV + i_h * DV + o_dv[None, :],
                       mask=m_q[:, None] & (o_dv[None, :] < DV), other=0.0)
        b_lse = tl.zeros([BM], dtype=tl.float32)
        b_delta = tl.zeros([BM], dtype=tl.float32)
        if not RELU:
            b_lse = tl.load(lse + (bos + r_q) * H + i_h, mask=m_q, other=0.0)
            b_delta = tl.load(delta + (bos + r_q) * H + i_h, mask=m_q, other=0.0)
        b_pt, b_dst = _probs_grad_t(b_q, b_k, b_v, b_do, b_lse, b_delta, r_q, r_k, n_len, w, scale, CAUSAL, RELU)
        b_dv += _dot(b_pt.to(b_do.dtype), b_do)
        b_dk += _dot(b_dst.to(b_q.dtype), b_q)
    tl.store(dk + (bos + r_k[:, None]) * H * D + i_h * D + o_d[None, :], (b_dk * scale).to(dk.dtype.element_ty),
             mask=m_kd)
    tl.store(dv + (bos + r_k[:, None]) * H * DV + i_h * DV + o_dv[None, :], b_dv.to(dv.dtype.element_ty),
             mask=m_kdv)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["T"])
def _bwd_dq(q, k, v, do, lse, delta, dq, cu, tab, scale, w, T,
            H: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
            BDV: tl.constexpr, CAUSAL: tl.constexpr, RELU: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, bos, eos, i_tile = chunk_locate(tab, cu, i_t, BM, T, IS_VARLEN)
    n_len = eos - bos
    q0 = i_tile * BM
    r_q = q0 + tl.arange(0, BM)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_q = r_q < n_len
    m_qd = m_q[:, None] & (o_d[None, :] < D)
    b_q = tl.load(q + (bos + r_q[:, None]) * H * D + i_h * D + o_d[None, :], mask=m_qd, other=0.0)
    b_do = tl.load(do + (bos + r_q[:, None]) * H * DV + i_h * DV + o_dv[None, :],
                   mask=m_q[:, None] & (o_dv[None, :] < DV), other=0.0)
    b_lse = tl.zeros([BM], dtype=tl.float32)
    b_delta = tl.zeros([BM], dtype=tl.float32)
    if not RELU:
        b_lse = tl.load(lse + (bos + r_q) * H + i_h, mask=m_q, other=0.0)
        b_delta = tl.load(delta + (bos + r_q) * H + i_h, mask=m_q, other=0.0)
    last = tl.minimum(q0 + BM, n_len) - 1
    k_start = (q0 // w) * w
    k_end = tl.minimum((last // w + 1) * w, n_len)
    if CAUSAL:
        k_end = tl.minimum(k_end, last + 1)
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    for k0 in range(k_start, k_end, BM):
        r_k = k0 + tl.arange(0, BM)
        m_k = r_k < n_len
        b_k = tl.load(k + (bos + r_k[:, None]) * H * D + i_h * D + o_d[None, :],
                      mask=m_k[:, None] & (o_d[None, :] < D), other=0.0)
        b_v = tl.load(v + (bos + r_k[:, None]) * H * DV + i_h * DV + o_dv[None, :],
                      mask=m_k[:, None] & (o_dv[None, :] < DV), other=0.0)
        b_p, b_ds = _probs_grad(b_q, b_k, b_v, b_do, b_lse, b_delta, r_q, r_k, n_len, w, scale, CAUSAL, RELU)
        b_dq += _dot(b_ds.to(b_k.dtype), b_k)
    tl.store(dq + (bos + r_q[:, None]) * H * D + i_h * D + o_d[None, :], (b_dq * scale).to(dq.dtype.element_ty),
             mask=m_qd)


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, w, causal, relu, scale, cu_seqlens, cu_seqlens_cpu=None):
        B, T, H, D = q.shape
        DV = v.shape[-1]
        BM = _tile(w)
        if cu_seqlens is None:  # dense: tiles indexed directly, no table
            cu, tab, n_tiles, t_arg = None, None, B * ceil_div(T, BM), T
        else:
            cu, tab, _ = varlen_chunk_tables(cu_seqlens, BM, cu_seqlens_cpu)
            n_tiles, t_arg = tab.shape[0], 0
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(v)
        lse = None if relu else q.new_empty(B, T, H, dtype=torch.float32)
        meta = dict(H=H, D=D, DV=DV, BM=BM, BD=max(16, next_power_of_2(D)), BDV=max(16, next_power_of_2(DV)),
                    CAUSAL=causal, RELU=relu, IS_VARLEN=cu is not None)
        if n_tiles > 0:
            _fwd[(n_tiles, H)](q, k, v, o, lse, cu, tab, scale, w, t_arg, **meta)
        # the backward kernels hold two [BM, D] fp32 accumulators: 32-row tiles above D = 64 (no spills)
        bm_bwd = 32 if BM > 32 and max(meta["BD"], meta["BDV"]) > 64 else BM
        if bm_bwd != BM:
            if cu is None:
                tab_b, n_tiles_b = None, B * ceil_div(T, bm_bwd)
            else:
                _, tab_b, _ = varlen_chunk_tables(cu_seqlens, bm_bwd, cu_seqlens_cpu)
                n_tiles_b = tab_b.shape[0]
        else:
            tab_b, n_tiles_b = tab, n_tiles
        ctx.save_for_backward(q, k, v, o, lse, cu, tab_b)
        ctx.meta = dict(meta, BM=bm_bwd)
        ctx.scale, ctx.w, ctx.n_tiles, ctx.t_arg = scale, w, n_tiles_b, t_arg
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu, tab = ctx.saved_tensors
        meta = ctx.meta
        do = do.contiguous()
        delta = None if meta["RELU"] else (do.float() * o.float()).sum(-1)  # [B, T, H]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        if ctx.n_tiles > 0:
            grid = (ctx.n_tiles, meta["H"])
            _bwd_dkv[grid](q, k, v, do, lse, delta, dk, dv, cu, tab, ctx.scale, ctx.w, ctx.t_arg, **meta)
            _bwd_dq[grid](q, k, v, do, lse, delta, dq, cu, tab, ctx.scale, ctx.w, ctx.t_arg, **meta)
        return dq, dk, dv, None, None, None, None, None, None


def block_attention_triton(q, k, v, block_size=64, causal=True, activation="softmax", scale=None,
                           cu_seqlens=None, cu_seqlens_cpu=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _BlockAttention.apply(q, k, v, block_size, causal, activation == "relu", scale, cu_seqlens,
                                 cu_seqlens_cpu)
