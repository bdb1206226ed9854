"""Chunked linear attention in Triton: forward and backward kernels in one ``torch.autograd.Function``.

Tokens of every sequence are cut into chunks of ``BT = 64``; a chunk's true length ``L`` (the last one may be
shorter) is used for all decays, so padding never enters a state. Five kernels (README.md has the equations):

forward   ``_fwd_h``   one program per (head, K tile, V tile) walks the chunks of its sequence in order and
                       stores the state entering every chunk, ``h[c]`` ([NC, H, K, V]), and the final state.
          ``_fwd_o``   one program per (chunk, V tile, head): ``o = scale·(diag(λ^{i+1}) Q h[c] + (QKᵀ⊙D) V)``.
backward  ``_bwd_dh``  walks the chunks backwards: ``dh[c]`` = gradient of the state leaving chunk c, and the
                       gradient of the initial state.
          ``_bwd_dqk`` per (chunk, K tile, head): dq and dk (loops over V tiles).
          ``_bwd_dv``  per (chunk, V tile, head): dv (loops over K tiles).

Dense batches are indexed directly (sequence ``n`` starts at token ``n·T``; no tables, no host transfer); packed
``cu_seqlens`` sequences go through token offsets ``cu`` and a chunk table built on the device (``IS_VARLEN``).
T is a runtime argument that is never specialized (no recompile per length). Offsets are int64 throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._triton_utils import chunk_span, seq_span
from .._triton_utils import dot as _dot
from .._chunk import ceil_div, varlen_chunk_tables

BT = 64  # chunk length: tokens per chunk

_CFG = dict(grid={}, num_warps=[4, 8], num_stages=[2, 3])


def _tile(d: int) -> int:
    return max(16, min(64, next_power_of_2(d)))


@triton.autotune(configs=autotune_configs(**_CFG), key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _fwd_h(k, v, g, h, h0, ht, cu, chunk_offsets, T,
           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
           BV: tl.constexpr, HAS_DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
           IS_VARLEN: tl.constexpr):
    i_nh, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boc = seq_span(cu, chunk_offsets, i_n, BT, T, IS_VARLEN)
    n_chunks = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    p_state = i_h * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV] inside one [H, K, V] state
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * H * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    if HAS_DECAY:
        b_g = tl.load(g + i_h).to(tl.float32)
    for c in range(0, n_chunks):
        tl.store(h + (boc + c) * H * K * V + p_state, b_h.to(h.dtype.element_ty), mask=m_kv)
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT)
        m_t = o_t < L
        b_k = tl.load(k + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :],
                      mask=m_t[:, None] & (o_k[None, :] < K), other=0.0)  # [BT, BK]
        b_v = tl.load(v + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :],
                      mask=m_t[:, None] & (o_v[None, :] < V), other=0.0)  # [BT, BV]
        if HAS_DECAY:
            k_dec = tl.where(m_t, tl.exp(b_g * (L - 1 - o_t).to(tl.float32)), 0.0)  # decay to the chunk end
            b_k = (b_k.to(tl.float32) * k_dec[:, None]).to(b_v.dtype)
            b_h = b_h * tl.exp(b_g * L.to(tl.float32))
        b_h += _dot(tl.trans(b_k), b_v)
    if STORE_FINAL:
        tl.store(ht + i_n * H * K * V + p_state, b_h, mask=m_kv)


@triton.jit
def _decay_mask(b_g, o_t, HAS_DECAY: tl.constexpr):
    """[BT, BT] lower-triangular weights λ^{i-j} (1 without decay)."""
    causal = o_t[:, None] >= o_t[None, :]
    if HAS_DECAY:
        diff = (o_t[:, None] - o_t[None, :]).to(tl.float32)
        return tl.where(causal, tl.exp(b_g * tl.maximum(diff, 0.0)), 0.0)
    else:
        return tl.where(causal, 1.0, 0.0)


@triton.autotune(configs=autotune_configs(**_CFG), key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _fwd_o(q, k, v, g, h, o, scale, cu, chunk_tab, T,
           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
           BV: tl.constexpr, HAS_DECAY: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_c, i_v, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_v = i_v * BV + tl.arange(0, BV)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_qk = m_t[:, None] & (o_k[None, :] < K)
        b_q = tl.load(q + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_qk, other=0.0)
        b_k = tl.load(k + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_qk, other=0.0)
        b_h = tl.load(h + i_c * H * K * V + i_h * K * V + o_k[:, None] * V + o_v[None, :],
                      mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0)
        b_o += _dot(b_q, b_h.to(b_q.dtype))
        b_A += _dot(b_q, tl.trans(b_k))
    b_g = 0.0
    if HAS_DECAY:
        b_g = tl.load(g + i_h).to(tl.float32)
        b_o = b_o * tl.exp(b_g * (o_t + 1).to(tl.float32))[:, None]
    b_A = b_A * _decay_mask(b_g, o_t, HAS_DECAY)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    b_v = tl.load(v + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], mask=m_tv, other=0.0)
    b_o += _dot(b_A.to(b_v.dtype), b_v)
    tl.store(o + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
             mask=m_tv)


@triton.autotune(configs=autotune_configs(**_CFG), key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _bwd_dh(q, do, g, dh, dht, dh0, scale, cu, chunk_offsets, T,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            BV: tl.constexpr, HAS_DECAY: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
            IS_VARLEN: tl.constexpr):
    i_nh, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boc = seq_span(cu, chunk_offsets, i_n, BT, T, IS_VARLEN)
    n_chunks = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    p_state = i_h * K * V + o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_n * H * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    if HAS_DECAY:
        b_g = tl.load(g + i_h).to(tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        # gradient of the state leaving chunk c
        tl.store(dh + (boc + c) * H * K * V + p_state, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT)
        m_t = o_t < L
        b_q = tl.load(q + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :],
                      mask=m_t[:, None] & (o_k[None, :] < K), other=0.0)  # [BT, BK]
        b_do = tl.load(do + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :],
                       mask=m_t[:, None] & (o_v[None, :] < V), other=0.0)  # [BT, BV]
        if HAS_DECAY:
            q_dec = tl.exp(b_g * (o_t + 1).to(tl.float32))
            b_q = (b_q.to(tl.float32) * q_dec[:, None]).to(b_do.dtype)
            b_dh = b_dh * tl.exp(b_g * L.to(tl.float32))
        b_dh += scale * _dot(tl.trans(b_q), b_do)
    if STORE_DH0:
        tl.store(dh0 + i_n * H * K * V + p_state, b_dh, mask=m_kv)


@triton.autotune(configs=autotune_configs(**_CFG), key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _bwd_dqk(q, k, v, g, h, do, dh, dq, dk, scale, cu, chunk_tab, T,
             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
             BV: tl.constexpr, HAS_DECAY: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_c, i_k, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_k = i_k * BK + tl.arange(0, BK)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dAt = tl.zeros([BT, BT], dtype=tl.float32)  # transpose accumulated directly: no tl.trans of a dot result
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
        b_v = tl.load(v + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], mask=m_tv, other=0.0)
        b_do = tl.load(do + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], mask=m_tv, other=0.0)
        p_state = i_c * H * K * V + i_h * K * V + o_k[:, None] * V + o_v[None, :]
        b_h = tl.load(h + p_state, mask=m_kv, other=0.0).to(b_do.dtype)  # state entering the chunk
        b_dh = tl.load(dh + p_state, mask=m_kv, other=0.0).to(b_v.dtype)  # grad of the state leaving it
        b_dA += _dot(b_do, tl.trans(b_v))
        b_dAt += _dot(b_v, tl.trans(b_do))
        b_dq += _dot(b_do, tl.trans(b_h))
        b_dk += _dot(b_v, tl.trans(b_dh))
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    b_q = tl.load(q + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_tk, other=0.0)
    b_g = 0.0
    if HAS_DECAY:
        b_g = tl.load(g + i_h).to(tl.float32)
        b_dq = b_dq * tl.exp(b_g * (o_t + 1).to(tl.float32))[:, None]
        k_dec = tl.where(m_t, tl.exp(b_g * (L - 1 - o_t).to(tl.float32)), 0.0)
        b_dk = b_dk * k_dec[:, None]
    b_dA = (b_dA * scale * _decay_mask(b_g, o_t, HAS_DECAY)).to(b_q.dtype)
    b_dAt = (b_dAt * scale * tl.trans(_decay_mask(b_g, o_t, HAS_DECAY))).to(b_q.dtype)
    b_dq = b_dq * scale + _dot(b_dA, b_k)
    b_dk += _dot(b_dAt, b_q)
    p_out = (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :]
    tl.store(dq + p_out, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_out, b_dk.to(dk.dtype.element_ty), mask=m_tk)


@triton.autotune(configs=autotune_configs(**_CFG), key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _bwd_dv(q, k, g, do, dh, dv, scale, cu, chunk_tab, T,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            BV: tl.constexpr, HAS_DECAY: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_c, i_v, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT, T, IS_VARLEN)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    o_v = i_v * BV + tl.arange(0, BV)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_q = tl.load(q + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (t0 + o_t[:, None]) * H * K + i_h * K + o_k[None, :], mask=m_tk, other=0.0)
        b_dh = tl.load(dh + i_c * H * K * V + i_h * K * V + o_k[:, None] * V + o_v[None, :],
                       mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0).to(b_k.dtype)
        b_A += _dot(b_k, tl.trans(b_q))  # (Q K^T)^T, formed directly
        b_dv += _dot(b_k, b_dh)
    b_g = 0.0
    if HAS_DECAY:
        b_g = tl.load(g + i_h).to(tl.float32)
        k_dec = tl.where(m_t, tl.exp(b_g * (L - 1 - o_t).to(tl.float32)), 0.0)
        b_dv = b_dv * k_dec[:, None]
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    b_do = tl.load(do + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], mask=m_tv, other=0.0)
    b_A = (b_A * scale * tl.trans(_decay_mask(b_g, o_t, HAS_DECAY))).to(b_do.dtype)
    b_dv += _dot(b_A, b_do)
    tl.store(dv + (t0 + o_t[:, None]) * H * V + i_h * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


class _Layout:
    """Dense ``[B, T]`` (indexed directly: no tables, nothing read back from the device) or packed sequences
    (``cu`` int32 offsets, chunk table ``[NC, 2]`` and chunk offsets, built on the device; ``NC`` from the
    host copy ``cu_seqlens_cpu`` when given, else from one device->host copy)."""

    def __init__(self, B: int, T: int, chunk: int, cu_seqlens=None, cu_seqlens_cpu=None):
        if cu_seqlens is None:
            self.varlen, self.T, self.N, self.NC = False, T, B, B * ceil_div(T, chunk)
            self.cu = self.tab = self.offs = None
        else:
            self.varlen, self.T = True, 0
            self.cu, self.tab, self.offs = varlen_chunk_tables(cu_seqlens, chunk, cu_seqlens_cpu)
            self.N, self.NC = self.cu.numel() - 1, self.tab.shape[0]


class _LinearAttentionChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, output_final_state, cu_seqlens, cu_seqlens_cpu=None):
        B, T, H, K = q.shape
        V = v.shape[-1]
        lay = _Layout(B, T, BT, cu_seqlens, cu_seqlens_cpu)
        N, NC = lay.N, lay.NC
        BK, BV = _tile(K), _tile(V)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        h = q.new_empty(NC, H, K, V)  # state entering each chunk, [NC, H, K, V]
        ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
        o = torch.empty_like(v)
        has_decay = g is not None
        _fwd_h[(N * H, triton.cdiv(K, BK), triton.cdiv(V, BV))](
            k, v, g, h, h0, ht, lay.cu, lay.offs, lay.T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            HAS_DECAY=has_decay, USE_H0=h0 is not None, STORE_FINAL=output_final_state, IS_VARLEN=lay.varlen)
        _fwd_o[(NC, triton.cdiv(V, BV), H)](
            q, k, v, g, h, o, scale, lay.cu, lay.tab, lay.T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            HAS_DECAY=has_decay, IS_VARLEN=lay.varlen)
        ctx.save_for_backward(q, k, v, g, h, h0)
        ctx.scale, ctx.lay = scale, lay
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h, h0 = ctx.saved_tensors
        lay = ctx.lay
        B, T, H, K = q.shape
        V = v.shape[-1]
        N, NC = lay.N, lay.NC
        BK, BV = _tile(K), _tile(V)
        has_decay = g is not None
        do = do.contiguous()
        if dht is not None:
            dht = dht.contiguous()
        dh = q.new_empty(NC, H, K, V)
        dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
        _bwd_dh[(N * H, triton.cdiv(K, BK), triton.cdiv(V, BV))](
            q, do, g, dh, dht, dh0, ctx.scale, lay.cu, lay.offs, lay.T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            HAS_DECAY=has_decay, USE_DHT=dht is not None, STORE_DH0=h0 is not None, IS_VARLEN=lay.varlen)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _bwd_dqk[(NC, triton.cdiv(K, BK), H)](
            q, k, v, g, h, do, dh, dq, dk, ctx.scale, lay.cu, lay.tab, lay.T,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_DECAY=has_decay, IS_VARLEN=lay.varlen)
        _bwd_dv[(NC, triton.cdiv(V, BV), H)](
            q, k, g, do, dh, dv, ctx.scale, lay.cu, lay.tab, lay.T,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_DECAY=has_decay, IS_VARLEN=lay.varlen)
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return dq, dk, dv, None, dh0, None, None, None, None


def _noncausal(q, k, v, scale, initial_state, output_final_state, cu_seqlens):
    """Non-causal mode is two matmuls per sequence (S = S0 + KᵀV, o = scale·Q S): cuBLAS through torch."""
    from .torch_chunk import linear_attention_torch

    return linear_attention_torch(q, k, v, scale=scale, causal=False, initial_state=initial_state,
                                  output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def linear_attention_triton(q, k, v, decay=None, scale=1.0, causal=True, initial_state=None,
                            output_final_state=False, cu_seqlens=None, cu_seqlens_cpu=None):
    if not causal:
        return _noncausal(q, k, v, scale, initial_state, output_final_state, cu_seqlens)
    g = None if decay is None else decay.detach().float().contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, initial_state))
    if not needs_grad and q.shape[1] <= BT:
        # short inputs without autograd (decoding): one program walks the tokens, no chunk states stored
        from .triton_recurrent import linear_attention_recurrent

        return linear_attention_recurrent(q, k, v, g, scale, h0, output_final_state, cu_seqlens)
    o, ht = _LinearAttentionChunk.apply(q, k, v, g, h0, scale, output_final_state, cu_seqlens, cu_seqlens_cpu)
    return o, ht
