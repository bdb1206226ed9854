"""Chunked SSD scan in Triton: forward and backward kernels in one ``torch.autograd.Function``.

Tokens of every sequence are cut into chunks of ``BT = 64``; a chunk's true length ``L`` (a sequence's last
chunk may be shorter) bounds every load, so padding never enters a state. Δ (the discretized dt, fp32) is an
input of the Function: ``dt``, ``dt_bias``, softplus and ``dt_limit`` are differentiated by torch around it.
README.md has the equations. With ``cs`` the in-chunk cumsum of ``Δ A`` and ``v = Δ x``:

forward   ``_cumsum``  per (chunk, head block): ``cs``.
          ``_fwd_h``   per (sequence·head, P tile, N tile): walks the chunks, stores the state entering every
                       chunk ``h[c]`` ([NC, H, P, N]) and the final state.
          ``_fwd_y``   per (chunk, P tile, head): ``y = diag(e^cs) C hᵀ + (C Bᵀ ⊙ M) v + D x``.
backward  ``_bwd_dh``  walks the chunks backwards: ``dh[c]`` = gradient of the state leaving chunk c, and dh0.
          ``_bwd_dx``  per (chunk, P tile, head): ``dv``, hence dx and the ``x·dv`` part of dΔ.
          ``_bwd_dbc`` per (chunk, N tile, group): dB and dC summed over the group's heads, and ``dcs`` per
                       head from ``dcs_l = C_l·dC_l − B_l·dB_l (+ ⟨dh', h'⟩ at the chunk's last token)``.
          ``_bwd_dt``  per (chunk, head block): ``da`` = reverse in-chunk cumsum of ``dcs``; dΔ and dA.

Sequences (batch rows or packed ``cu_seqlens`` sequences) are addressed through token offsets and a chunk
table, one code path for both; T is never a kernel argument (no recompile per length).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._chunk import chunk_indices, chunk_offsets, uniform_cu_seqlens
from .._triton_utils import chunk_span
from .._triton_utils import dot as _dot
from ._dt import discretize_dt

BT = 64  # tokens per chunk

_CFG = dict(grid={}, num_warps=[4, 8], num_stages=[2])
_KEY = ["H", "G", "P", "N", "BP", "BN"]


def _tile(d: int) -> int:
    return max(16, min(64, next_power_of_2(d)))


@triton.jit
def _decay_mask(b_cs, o_t):
    """[BT, BT] M_ls = exp(cs_l − cs_s) for s ≤ l, else 0 (every used exponent is ≤ 0)."""
    diff = b_cs[:, None] - b_cs[None, :]
    return tl.where(o_t[:, None] >= o_t[None, :], tl.exp(tl.minimum(diff, 0.0)), 0.0)


@triton.jit
def _cumsum(delta, A, cs, cu, chunk_tab, H: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
    i_c, i_hb = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    o_t = tl.arange(0, BT)
    o_h = i_hb * BH + tl.arange(0, BH)
    m = (o_t[:, None] < L) & (o_h[None, :] < H)
    p = (t0 + o_t[:, None]) * H + o_h[None, :]
    b_a = tl.load(delta + p, mask=m, other=0.0) * tl.load(A + o_h, mask=o_h < H, other=0.0)[None, :]
    tl.store(cs + p, tl.cumsum(b_a, axis=0), mask=m)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _fwd_h(x, delta, B, cs, h, h0, ht, cu, chunk_offs,
           H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
           BP: tl.constexpr, BN: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_nh, i_p, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    boc = tl.load(chunk_offs + i_n).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_s = i_s * BN + tl.arange(0, BN)
    m_ps = (o_p[:, None] < P) & (o_s[None, :] < N)
    p_state = i_h * P * N + o_p[:, None] * N + o_s[None, :]  # [BP, BN] inside one [H, P, N] state
    b_h = tl.zeros([BP, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * H * P * N + p_state, mask=m_ps, other=0.0).to(tl.float32)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        tl.store(h + (boc + c) * H * P * N + p_state, b_h.to(h.dtype.element_ty), mask=m_ps)
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT)
        m_t = o_t < L
        b_cs = tl.load(cs + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
        b_last = tl.load(cs + (t0 + L - 1) * H + i_h)
        b_dt = tl.load(delta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
        b_x = tl.load(x + (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :],
                      mask=m_t[:, None] & (o_p[None, :] < P), other=0.0)  # [BT, BP]
        b_B = tl.load(B + (t0 + o_t[:, None]) * G * N + i_g * N + o_s[None, :],
                      mask=m_t[:, None] & (o_s[None, :] < N), other=0.0)  # [BT, BN]
        b_w = tl.where(m_t, b_dt * tl.exp(b_last - b_cs), 0.0)  # Δ_s · decay from s to the chunk end
        b_v = (b_x.to(tl.float32) * b_w[:, None]).to(b_B.dtype)
        b_h = b_h * tl.exp(b_last) + _dot(tl.trans(b_v), b_B)
    if STORE_FINAL:
        tl.store(ht + i_n * H * P * N + p_state, b_h, mask=m_ps)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _fwd_y(x, delta, B, C, D, cs, h, y, cu, chunk_tab,
           H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
           BP: tl.constexpr, BN: tl.constexpr, D_MODE: tl.constexpr):
    i_c, i_p, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g = i_h // (H // G)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_p = i_p * BP + tl.arange(0, BP)
    m_tp = m_t[:, None] & (o_p[None, :] < P)
    b_cb = tl.zeros([BT, BT], dtype=tl.float32)
    b_y = tl.zeros([BT, BP], dtype=tl.float32)
    for i_s in range(0, tl.cdiv(N, BN)):
        o_s = i_s * BN + tl.arange(0, BN)
        m_ts = m_t[:, None] & (o_s[None, :] < N)
        p_bc = (t0 + o_t[:, None]) * G * N + i_g * N + o_s[None, :]
        b_C = tl.load(C + p_bc, mask=m_ts, other=0.0)
        b_B = tl.load(B + p_bc, mask=m_ts, other=0.0)
        b_h = tl.load(h + i_c * H * P * N + i_h * P * N + o_p[:, None] * N + o_s[None, :],
                      mask=(o_p[:, None] < P) & (o_s[None, :] < N), other=0.0)  # [BP, BN]
        b_cb += _dot(b_C, tl.trans(b_B))
        b_y += _dot(b_C, tl.trans(b_h.to(b_C.dtype)))
    b_cs = tl.load(cs + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
    b_dt = tl.load(delta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
    b_x = tl.load(x + (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :], mask=m_tp, other=0.0)
    b_y = b_y * tl.exp(b_cs)[:, None]
    b_v = (b_x.to(tl.float32) * b_dt[:, None]).to(b_x.dtype)
    b_y += _dot((b_cb * _decay_mask(b_cs, o_t)).to(b_x.dtype), b_v)
    if D_MODE == 1:  # D [H]
        b_y += tl.load(D + i_h).to(tl.float32) * b_x.to(tl.float32)
    elif D_MODE == 2:  # D [H, P]
        b_y += tl.load(D + i_h * P + o_p, mask=o_p < P, other=0.0).to(tl.float32)[None, :] * b_x.to(tl.float32)
    tl.store(y + (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :], b_y.to(y.dtype.element_ty), mask=m_tp)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _bwd_dh(dy, C, cs, dh, dht, dh0, cu, chunk_offs,
            H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
            BP: tl.constexpr, BN: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
    i_nh, i_p, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    boc = tl.load(chunk_offs + i_n).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_s = i_s * BN + tl.arange(0, BN)
    m_ps = (o_p[:, None] < P) & (o_s[None, :] < N)
    p_state = i_h * P * N + o_p[:, None] * N + o_s[None, :]
    b_dh = tl.zeros([BP, BN], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_n * H * P * N + p_state, mask=m_ps, other=0.0).to(tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        tl.store(dh + (boc + c) * H * P * N + p_state, b_dh.to(dh.dtype.element_ty), mask=m_ps)
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT)
        m_t = o_t < L
        b_cs = tl.load(cs + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
        b_last = tl.load(cs + (t0 + L - 1) * H + i_h)
        b_dy = tl.load(dy + (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :],
                       mask=m_t[:, None] & (o_p[None, :] < P), other=0.0)  # [BT, BP]
        b_C = tl.load(C + (t0 + o_t[:, None]) * G * N + i_g * N + o_s[None, :],
                      mask=m_t[:, None] & (o_s[None, :] < N), other=0.0)  # [BT, BN]
        b_q = (b_C.to(tl.float32) * tl.where(m_t, tl.exp(b_cs), 0.0)[:, None]).to(b_dy.dtype)
        b_dh = b_dh * tl.exp(b_last) + _dot(tl.trans(b_dy), b_q)
    if STORE_DH0:
        tl.store(dh0 + i_n * H * P * N + p_state, b_dh, mask=m_ps)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _bwd_dx(x, delta, B, C, D, cs, dh, dy, dx, ddt_part, cu, chunk_tab,
            H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
            BP: tl.constexpr, BN: tl.constexpr, D_MODE: tl.constexpr):
    i_c, i_p, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g = i_h // (H // G)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_p = i_p * BP + tl.arange(0, BP)
    m_tp = m_t[:, None] & (o_p[None, :] < P)
    b_cb = tl.zeros([BT, BT], dtype=tl.float32)
    b_st = tl.zeros([BT, BP], dtype=tl.float32)
    for i_s in range(0, tl.cdiv(N, BN)):
        o_s = i_s * BN + tl.arange(0, BN)
        m_ts = m_t[:, None] & (o_s[None, :] < N)
        p_bc = (t0 + o_t[:, None]) * G * N + i_g * N + o_s[None, :]
        b_C = tl.load(C + p_bc, mask=m_ts, other=0.0)
        b_B = tl.load(B + p_bc, mask=m_ts, other=0.0)
        b_dh = tl.load(dh + i_c * H * P * N + i_h * P * N + o_p[:, None] * N + o_s[None, :],
                       mask=(o_p[:, None] < P) & (o_s[None, :] < N), other=0.0)  # [BP, BN]
        b_cb += _dot(b_C, tl.trans(b_B))
        b_st += _dot(b_B, tl.trans(b_dh.to(b_B.dtype)))
    b_cs = tl.load(cs + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
    b_last = tl.load(cs + (t0 + L - 1) * H + i_h)
    b_dt = tl.load(delta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
    p_tp = (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :]
    b_dy = tl.load(dy + p_tp, mask=m_tp, other=0.0)
    b_x = tl.load(x + p_tp, mask=m_tp, other=0.0).to(tl.float32)
    # dv = (C Bᵀ ⊙ M)ᵀ dy + diag(e^{cs_last − cs}) B dh'ᵀ
    b_dv = _dot(tl.trans((b_cb * _decay_mask(b_cs, o_t)).to(b_dy.dtype)), b_dy)
    b_dv += b_st * tl.where(m_t, tl.exp(b_last - b_cs), 0.0)[:, None]
    b_dx = b_dv * b_dt[:, None]
    if D_MODE == 1:
        b_dx += tl.load(D + i_h).to(tl.float32) * b_dy.to(tl.float32)
    elif D_MODE == 2:
        b_dx += tl.load(D + i_h * P + o_p, mask=o_p < P, other=0.0).to(tl.float32)[None, :] * b_dy.to(tl.float32)
    tl.store(dx + p_tp, b_dx.to(dx.dtype.element_ty), mask=m_tp)
    tl.store(ddt_part + ((t0 + o_t) * tl.num_programs(1) + i_p) * H + i_h, tl.sum(b_dv * b_x, axis=1), mask=m_t)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _bwd_dbc(x, delta, B, C, cs, h, dh, dy, dB, dC, dcs_part, cu, chunk_tab,
             H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
             BP: tl.constexpr, BN: tl.constexpr):
    i_c, i_s, i_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_s = i_s * BN + tl.arange(0, BN)
    m_ts = m_t[:, None] & (o_s[None, :] < N)
    p_bc = (t0 + o_t[:, None]) * G * N + i_g * N + o_s[None, :]
    b_C = tl.load(C + p_bc, mask=m_ts, other=0.0)
    b_B = tl.load(B + p_bc, mask=m_ts, other=0.0)
    b_dC = tl.zeros([BT, BN], dtype=tl.float32)
    b_dB = tl.zeros([BT, BN], dtype=tl.float32)
    for i_hh in range(0, H // G):
        i_h = i_g * (H // G) + i_hh
        b_cs = tl.load(cs + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
        b_last = tl.load(cs + (t0 + L - 1) * H + i_h)
        b_dt = tl.load(delta + (t0 + o_t) * H + i_h, mask=m_t, other=0.0)
        b_dyv = tl.zeros([BT, BT], dtype=tl.float32)  # dy vᵀ
        b_dyh = tl.zeros([BT, BN], dtype=tl.float32)  # dy h
        b_vdh = tl.zeros([BT, BN], dtype=tl.float32)  # v dh'
        b_hh = tl.zeros([BN], dtype=tl.float32)  # ⟨dh', h⟩ per state column
        for i_p in range(0, tl.cdiv(P, BP)):
            o_p = i_p * BP + tl.arange(0, BP)
            m_tp = m_t[:, None] & (o_p[None, :] < P)
            m_ps = (o_p[:, None] < P) & (o_s[None, :] < N)
            p_tp = (t0 + o_t[:, None]) * H * P + i_h * P + o_p[None, :]
            b_dy = tl.load(dy + p_tp, mask=m_tp, other=0.0)
            b_x = tl.load(x + p_tp, mask=m_tp, other=0.0)
            b_v = (b_x.to(tl.float32) * b_dt[:, None]).to(b_dy.dtype)
            p_state = i_c * H * P * N + i_h * P * N + o_p[:, None] * N + o_s[None, :]
            b_h = tl.load(h + p_state, mask=m_ps, other=0.0)
            b_dh = tl.load(dh + p_state, mask=m_ps, other=0.0)
            b_dyv += _dot(b_dy, tl.trans(b_v))
            b_dyh += _dot(b_dy, b_h.to(b_dy.dtype))
            b_vdh += _dot(b_v, b_dh.to(b_v.dtype))
            b_hh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=0)
        b_z = (b_dyv * _decay_mask(b_cs, o_t)).to(b_C.dtype)
        b_dc = b_dyh * tl.where(m_t, tl.exp(b_cs), 0.0)[:, None] + _dot(b_z, b_B)
        b_db_state = b_vdh * tl.where(m_t, tl.exp(b_last - b_cs), 0.0)[:, None]
        b_db = _dot(tl.trans(b_z), b_C) + b_db_state
        b_dC += b_dc
        b_dB += b_db
        # dcs_l = C_l·dC_l − B_l·dB_l, and at the chunk's last token ⟨dh', h'⟩ with
        # h' = e^{cs_last} h + (state written by the chunk), ⟨dh', written⟩ = Σ_s B_s·dB_state_s
        b_dcs = tl.sum(b_C.to(tl.float32) * b_dc, axis=1) - tl.sum(b_B.to(tl.float32) * b_db, axis=1)
        b_end = tl.exp(b_last) * tl.sum(b_hh, axis=0) + tl.sum(tl.sum(b_B.to(tl.float32) * b_db_state, axis=1), axis=0)
        b_dcs += tl.where(o_t == L - 1, b_end, 0.0)
        tl.store(dcs_part + ((t0 + o_t) * tl.num_programs(1) + i_s) * H + i_h, b_dcs, mask=m_t)
    tl.store(dB + p_bc, b_dB.to(dB.dtype.element_ty), mask=m_ts)
    tl.store(dC + p_bc, b_dC.to(dC.dtype.element_ty), mask=m_ts)


@triton.jit
def _bwd_dt(delta, A, dcs, ddt_v, ddt, dA_part, cu, chunk_tab, H: tl.constexpr, BT: tl.constexpr,
            BH: tl.constexpr):
    i_c, i_hb = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    o_t = tl.arange(0, BT)
    o_h = i_hb * BH + tl.arange(0, BH)
    m = (o_t[:, None] < L) & (o_h[None, :] < H)
    p = (t0 + o_t[:, None]) * H + o_h[None, :]
    b_dcs = tl.load(dcs + p, mask=m, other=0.0)
    # da_t = Σ_{l ≥ t in the chunk} dcs_l  (cs_l = Σ_{t ≤ l} a_t)
    b_da = tl.sum(b_dcs, axis=0)[None, :] - tl.cumsum(b_dcs, axis=0) + b_dcs
    b_dt = tl.load(delta + p, mask=m, other=0.0)
    b_A = tl.load(A + o_h, mask=o_h < H, other=0.0)
    tl.store(ddt + p, tl.load(ddt_v + p, mask=m, other=0.0) + b_da * b_A[None, :], mask=m)
    tl.store(dA_part + i_c * H + o_h, tl.sum(b_da * b_dt, axis=0), mask=o_h < H)


def chunk_tables(cu_seqlens, batch: int, seq_len: int, chunk: int, device):
    """``(cu [N+1] int32, table [NC, 2] int32 (sequence, chunk in sequence), offsets [N+1] int32)``."""
    if cu_seqlens is None:
        cu = uniform_cu_seqlens(batch, seq_len, device="cpu")  # built on the host: no device sync
        return cu.to(device), chunk_indices(cu, chunk).to(device), chunk_offsets(cu, chunk).to(device)
    cu = cu_seqlens.to(torch.int32)
    return cu, chunk_indices(cu, chunk), chunk_offsets(cu, chunk)


def _d_mode(D):
    return 0 if D is None else D.dim()


class _SSDChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, h0, output_final_state, cu_seqlens):
        Bsz, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        cu, chunk_tab, chunk_offs = chunk_tables(cu_seqlens, Bsz, T, BT, x.device)
        Nseq, NC = cu.numel() - 1, chunk_tab.shape[0]
        BP, BN = _tile(P), _tile(N)
        BH = min(16, next_power_of_2(H))
        x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
        delta, A = delta.contiguous(), A.float().contiguous()
        Dc = None if D is None else D.contiguous()
        cs = torch.empty_like(delta)
        _cumsum[(NC, triton.cdiv(H, BH))](delta, A, cs, cu, chunk_tab, H=H, BT=BT, BH=BH)
        h = x.new_empty(NC, H, P, N)  # state entering each chunk
        ht = x.new_empty(Nseq, H, P, N, dtype=torch.float32) if output_final_state else None
        dims = dict(H=H, G=G, P=P, N=N, BT=BT, BP=BP, BN=BN)
        _fwd_h[(Nseq * H, triton.cdiv(P, BP), triton.cdiv(N, BN))](
            x, delta, B, cs, h, h0, ht, cu, chunk_offs, **dims, USE_H0=h0 is not None,
            STORE_FINAL=output_final_state)
        y = torch.empty_like(x)
        _fwd_y[(NC, triton.cdiv(P, BP), H)](x, delta, B, C, Dc, cs, h, y, cu, chunk_tab, **dims,
                                            D_MODE=_d_mode(D))
        ctx.save_for_backward(x, delta, A, B, C, D, h0, cs, h, cu, chunk_tab, chunk_offs)
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        x, delta, A, B, C, D, h0, cs, h, cu, chunk_tab, chunk_offs = ctx.saved_tensors
        Bsz, T, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        Nseq, NC = cu.numel() - 1, chunk_tab.shape[0]
        BP, BN = _tile(P), _tile(N)
        BH = min(16, next_power_of_2(H))
        NP, NS = triton.cdiv(P, BP), triton.cdiv(N, BN)
        dims = dict(H=H, G=G, P=P, N=N, BT=BT, BP=BP, BN=BN)
        dy = dy.contiguous()
        dht = None if dht is None else dht.contiguous()
        dh = x.new_empty(NC, H, P, N)  # gradient of the state leaving each chunk
        dh0 = x.new_empty(Nseq, H, P, N, dtype=torch.float32) if h0 is not None else None
        _bwd_dh[(Nseq * H, NP, NS)](dy, C, cs, dh, dht, dh0, cu, chunk_offs, **dims, USE_DHT=dht is not None,
                                    STORE_DH0=h0 is not None)
        dx = torch.empty_like(x)
        ddt_part = x.new_empty(Bsz * T, NP, H, dtype=torch.float32)  # partial sums per P tile
        Dc = None if D is None else D.contiguous()
        _bwd_dx[(NC, NP, H)](x, delta, B, C, Dc, cs, dh, dy, dx, ddt_part, cu, chunk_tab, **dims,
                             D_MODE=_d_mode(D))
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dcs_part = x.new_empty(Bsz * T, NS, H, dtype=torch.float32)  # partial sums per N tile
        _bwd_dbc[(NC, NS, G)](x, delta, B, C, cs, h, dh, dy, dB, dC, dcs_part, cu, chunk_tab, **dims)
        ddt = torch.empty_like(delta)
        dA_part = x.new_empty(NC, H, dtype=torch.float32)
        _bwd_dt[(NC, triton.cdiv(H, BH))](delta, A, dcs_part.sum(1), ddt_part.sum(1), ddt, dA_part, cu,
                                          chunk_tab, H=H, BT=BT, BH=BH)
        dA = dA_part.sum(0)
        dD = None
        if D is not None and ctx.needs_input_grad[5]:
            dD = (dy.float() * x.float()).sum((0, 1))  # [H, P]
            dD = (dD if D.dim() == 2 else dD.sum(-1)).to(D.dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dx, ddt, dA, dB, dC, dD, dh0, None, None


def ssd_scan_triton(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")),
                    initial_state=None, output_final_state=False, cu_seqlens=None, chunk_size=BT):
    """Inputs already checked by the public function. Returns (y in x's dtype, final state fp32 or None)."""
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, T, H] fp32, differentiable
    Af = A.float()
    h0 = None if initial_state is None else initial_state.contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, dt_bias, initial_state))
    if not needs_grad and x.shape[1] <= BT:
        # short inputs without autograd (decoding): one program walks the tokens, no chunk states stored
        from .triton_recurrent import ssd_scan_recurrent

        return ssd_scan_recurrent(x, delta, Af, B, C, D, h0, output_final_state, cu_seqlens)
    y, ht = _SSDChunk.apply(x, delta, Af, B, C, D, h0, output_final_state, cu_seqlens)
    return y, ht
