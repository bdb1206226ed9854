"""Recurrent (token-by-token) linear attention in Triton: for decoding and short inputs without autograd.

One program per (sequence, head, V tile) keeps its ``[K, BV]`` slice of the state in registers (fp32) and walks
the tokens: ``S ← λ S + k vᵀ``, ``o = scale · Sᵀ q``. Nothing but the outputs and the final state is written,
so a decoding step costs one read of the state and one write. ``linear_attention`` picks it for inputs of at
most one chunk (T ≤ 64) when no input needs a gradient (decoding); training goes through ``triton_chunk``.

It also has a backward (``_LinearAttentionRecurrent``, usable directly for short sequences): one program per
(sequence, head, K tile) holding a ``[BK, V]`` slice walks forward recomputing ``S_t`` for
``dq_t = scale · S_t do_t``, then backward accumulating ``dS ← λ dS + scale · q_t do_tᵀ`` (starting from the
final-state gradient) for ``dk_t = dS v_t`` and a per-K-tile partial ``dv_t = dSᵀ k_t`` summed afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._triton_utils import seq_span


@triton.autotune(configs=autotune_configs(grid={}, num_warps=[4], num_stages=[1]),  # 1 warp spills at D = 128
                 key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _fwd_recurrent(q, k, v, g, o, h0, ht, scale, cu, T,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   HAS_DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
                   IS_VARLEN: tl.constexpr):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, _ = seq_span(cu, cu, i_n, 1, T, IS_VARLEN)  # dense: bos = n * T, no offsets tensor
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_h * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * H * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    if HAS_DECAY:
        b_lam = tl.exp(tl.load(g + i_h).to(tl.float32))
    for t in range(bos, eos):
        b_q = tl.load(q + t * H * K + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + t * H * K + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + t * H * V + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        if HAS_DECAY:
            b_h = b_h * b_lam
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale  # [BV]
        tl.store(o + t * H * V + i_h * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL:
        tl.store(ht + i_n * H * K * V + p_state, b_h, mask=m_kv)


def _offsets(cu_seqlens):
    """int32 token offsets of the packed sequences, or None for a dense ``[B, T]`` batch (indexed directly)."""
    return None if cu_seqlens is None else cu_seqlens.to(torch.int32).contiguous()


def linear_attention_recurrent(q, k, v, g, scale, h0, output_final_state, cu_seqlens):
    """``g``: fp32 ``[H]`` log-decay or None; ``h0``: ``[N, H, K, V]`` or None. Returns (o, final or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    cu = _offsets(cu_seqlens)
    N = B if cu is None else cu.numel() - 1
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    BK = max(16, next_power_of_2(K))
    BV = max(16, min(next_power_of_2(V), 8192 // BK))  # keep the register tile at ≤ 8192 fp32
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    _fwd_recurrent[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, o, h0, ht, scale, cu, T, H=H, K=K, V=V, BK=BK, BV=BV,
        HAS_DECAY=g is not None, USE_H0=h0 is not None, STORE_FINAL=output_final_state, IS_VARLEN=cu is not None)
    return o, ht


@triton.autotune(configs=autotune_configs(grid={}, num_warps=[4], num_stages=[1]),  # 1 warp spills at D = 128
                 key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit(do_not_specialize=["T"])
def _bwd_recurrent(q, k, v, g, do, h0, dht, dq, dk, dv_part, dh0, scale, cu, T,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   HAS_DECAY: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr, IS_VARLEN: tl.constexpr):
    i_nh, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, _ = seq_span(cu, cu, i_n, 1, T, IS_VARLEN)
    n_seq = tl.num_programs(0) // H
    if IS_VARLEN:
        n_tok = tl.load(cu + n_seq).to(tl.int64)  # total tokens: stride of the dv partials
    else:
        n_tok = n_seq.to(tl.int64) * T
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_h * K * V + o_k[:, None] * V + o_v[None, :]
    b_lam = 1.0
    if HAS_DECAY:
        b_lam = tl.exp(tl.load(g + i_h).to(tl.float32))
    # forward walk: recompute S_t, dq_t = scale · S_t do_t (complete: this program holds all of V)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * H * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        b_k = tl.load(k + t * H * K + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + t * H * V + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + t * H * V + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_h = b_h * b_lam + b_k[:, None] * b_v[None, :]
        b_dq = tl.sum(b_h * b_do[None, :], axis=1) * scale
        tl.store(dq + t * H * K + i_h * K + o_k, b_dq.to(dq.dtype.element_ty), mask=m_k)
    # backward walk: dS_t = λ dS_{t+1} + scale · q_t do_tᵀ
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_n * H * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    for tt in range(bos, eos):
        t = eos - 1 - (tt - bos)
        b_q = tl.load(q + t * H * K + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + t * H * K + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + t * H * V + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + t * H * V + i_h * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_dh += scale * b_q[:, None] * b_do[None, :]
        b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        tl.store(dk + t * H * K + i_h * K + o_k, b_dk.to(dk.dtype.element_ty), mask=m_k)
        tl.store(dv_part + (i_k * n_tok + t) * H * V + i_h * V + o_v, b_dv, mask=m_v)
        b_dh = b_dh * b_lam
    if USE_H0:
        tl.store(dh0 + i_n * H * K * V + p_state, b_dh, mask=m_kv)


class _LinearAttentionRecurrent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, output_final_state, cu_seqlens):
        o, ht = linear_attention_recurrent(q, k, v, g, scale, h0, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, g, h0, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, cu_seqlens = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        cu = _offsets(cu_seqlens)
        N = B if cu is None else cu.numel() - 1
        q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
        BV = max(16, next_power_of_2(V))
        BK = max(16, min(next_power_of_2(K), 8192 // BV))
        NK = triton.cdiv(K, BK)
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dv_part = q.new_empty(NK, B, T, H, V, dtype=torch.float32)
        dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
        _bwd_recurrent[(N * H, NK)](
            q, k, v, g, do, h0, None if dht is None else dht.contiguous(), dq, dk, dv_part, dh0, ctx.scale, cu, T,
            H=H, K=K, V=V, BK=BK, BV=BV, HAS_DECAY=g is not None, USE_H0=h0 is not None, USE_DHT=dht is not None,
            IS_VARLEN=cu is not None)
        dv = dv_part.sum(0).to(v.dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, None, dh0, None, None, None


def linear_attention_recurrent_autograd(q, k, v, g, scale, h0, output_final_state, cu_seqlens):
    """The recurrent kernels as one differentiable op (same arguments as :func:`linear_attention_recurrent`)."""
    return _LinearAttentionRecurrent.apply(q, k, v, g, h0, scale, output_final_state, cu_seqlens)
