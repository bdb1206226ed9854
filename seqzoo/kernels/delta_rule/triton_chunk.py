"""Chunked delta rule in Triton: forward and backward kernels in one ``torch.autograd.Function``.

Inputs are viewed as ``[T_total, H, D]``. Dense ``[B, T]`` batches are indexed directly (chunk ``c`` is chunk
``c mod ceil(T/BT)`` of sequence ``c // ceil(T/BT)``, which starts at token ``n*T``: ``chunk_span`` / ``seq_span``
in ``seqzoo.kernels._triton_utils``), so a dense call builds no table and reads nothing back from the device.
Packed sequences use a chunk table built on the device (``_chunk.varlen_chunk_tables``). Chunks of ``BT``
tokens never straddle a sequence. Equations: README.md. Per chunk, ``S`` the state entering it:

forward
  1. ``_wy_solve``    (chunk, head):      Ainv = (I + strict_tril(diag(b) K K^T))^{-1} by 16x16 blocks (saved)
  2. ``_wy_apply``    (chunk, head):      W = Ainv diag(b) K, U = Ainv diag(b) V                  (parallel)
  3. ``_state_fwd``   (seq*head, V block): S_c stored per chunk, V_new = U - W S, S += K^T V_new (sequential)
  4. ``_output_fwd``  (chunk, V block, head): O = Q S + tril(Q K^T) V_new                        (parallel)
backward (reruns 2 and 3; the forward stores its inputs and Ainv)
  5. ``_dv_local``    (chunk, V block, head): tril(Q K^T)^T dO                                   (parallel)
  6. ``_state_bwd``   (seq*head, V block), chunks in reverse, dS' = grad of the state leaving the chunk:
                      dV_new = dV_local + K dS';  dS = dS' + Q^T dO - W^T dV_new                (3 dots a step)
  7. ``_dqkw_bwd``    (chunk, K tile, head): dq, the state part of dk, dW
  8. ``_wy_bwd``      (chunk, head): dv, dbeta and the rest of dk through the WY transform.

Dots take operands in the input dtype (bf16 / fp16 tensor cores) and accumulate in fp32; fp32 inputs use
``input_precision="ieee"`` so that the fp32 path is exact to rounding. Chunk states, their gradients and
V_new are stored in the input dtype (fp32 in registers). Block dims are powers of two >= 16 with masks, so
K, V need not be powers of two (K, V <= 256). T is a runtime argument that is never specialized: a new length
neither re-tunes nor recompiles. Offsets are int64; counts that grow with the input are on grid x.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, hopper_prune, next_power_of_2
from .._triton_utils import chunk_span, dot_f32, seq_span
from .._triton_utils import dot as _mm
from .._chunk import ceil_div, varlen_chunk_tables

# fp32 products of the 16 x 16 blocks in the WY solve. "ieee" (exact FMAs) compiles to 2870 SASS
# instructions at 4 warps against 7262 for tensor-core "tf32x3": the tiles are too small for the split.
SOLVE_PRECISION = tl.constexpr("ieee")

BT = 64  # chunk length for head dims up to 128; 32 above (keeps the [BT, K] fp32 tiles within shared memory)


def chunk_size(K: int) -> int:
    """Tokens per chunk for head dim K (the Ainv buffer, chunk tables and kernels all use it)."""
    return BT if _block(K) <= 128 else BT // 2


def _block(n: int) -> int:
    return max(16, next_power_of_2(n))


# ----------------------------------------------------------------------------------------------
# 1. WY representation of each chunk
# ----------------------------------------------------------------------------------------------


@triton.jit
def _rows16(x, t0, L, blk, i_h, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """Rows ``16 blk .. 16 blk + 15`` of the chunk starting at token ``t0`` (length ``L``) of ``x`` [T, H, D]:
    a [16, BD] tile, zero past the chunk or past D."""
    o = blk * 16 + tl.arange(0, 16)
    o_d = tl.arange(0, BD)
    m = (o < L)[:, None] & (o_d < D)[None, :]
    return tl.load(x + ((t0 + o)[:, None] * H + i_h) * D + o_d[None, :], mask=m, other=0.0)


@triton.jit
def _beta16(beta, t0, L, blk, i_h, H: tl.constexpr):
    o = blk * 16 + tl.arange(0, 16)
    return tl.load(beta + (t0 + o) * H + i_h, mask=o < L, other=0.0).to(tl.float32)


@triton.jit
def _a16(k, beta, t0, L, r, c, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """Block (r, c), r >= c, of A = strict_tril(diag(beta) K K^T) for the chunk at t0: fp32 [16, 16]."""
    k_r = _rows16(k, t0, L, r, i_h, H, K, BK)
    kb_r = (k_r.to(tl.float32) * _beta16(beta, t0, L, r, i_h, H)[:, None]).to(k_r.dtype)
    if r == c:
        o = tl.arange(0, 16)
        return tl.where(o[:, None] > o[None, :], _mm(kb_r, tl.trans(k_r)), 0.0)
    else:
        return _mm(kb_r, tl.trans(_rows16(k, t0, L, c, i_h, H, K, BK)))


@triton.jit
def _inv16(a):
    """``(I + a)^{-1}`` of a strictly lower-triangular fp32 [16, 16] tile. ``n = -a`` is nilpotent (``n^16 = 0``),
    so ``(I - n)^{-1} = (I + n)(I + n^2)(I + n^4)(I + n^8)``: 6 small dots, no row-by-row loop."""
    o = tl.arange(0, 16)
    p = -a
    inv = tl.where(o[:, None] == o[None, :], 1.0, 0.0) + p
    p = _mm32(p, p)  # n^2
    inv += _mm32(inv, p)
    p = _mm32(p, p)  # n^4
    inv += _mm32(inv, p)
    p = _mm32(p, p)  # n^8
    inv += _mm32(inv, p)
    return inv


@triton.jit
def _mm32(a, b):
    return dot_f32(a, b, SOLVE_PRECISION)


@triton.jit
def _store16(ainv, tile, t0, L, rblk, cblk, i_h, H: tl.constexpr, BT: tl.constexpr):
    """Block (rblk, cblk) of the chunk's [BT, BT] inverse into ``ainv`` [T, H, BT] (input dtype)."""
    o = tl.arange(0, 16)
    r = rblk * 16 + o
    p = ainv + ((t0 + r)[:, None] * H + i_h) * BT + cblk * 16 + o[None, :]
    tl.store(p, tile.to(ainv.dtype.element_ty), mask=(r < L)[:, None])


@triton.autotune(configs=autotune_configs({}, num_warps=[4], num_stages=[1]), key=["K", "BK", "BT"])
@triton.jit(do_not_specialize=["T"])
def _wy_solve_kernel(
    k, beta, ainv, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Ainv = (I + strict_tril(diag(beta) K K^T))^{-1} of one chunk, by 16 x 16 blocks (BT = 32 or 64):
    the diagonal blocks are inverted by doubling (:func:`_inv16`), then merged by block forward substitution,
    ``Ai_ij = -Ai_ii sum_{j<=m<i} A_im Ai_mj``. The A blocks are tensor-core dots of key tiles in the input
    dtype; the 16 x 16 fp32 products run in ``SOLVE_PRECISION``. Ainv is stored in the input dtype."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    zero = tl.zeros([16, 16], dtype=tl.float32)
    # row blocks in order; A_rj is formed when row block r needs it (K rows reloaded from L1, so at most
    # two [16, BK] key tiles and the finished inverse blocks are live at a time)
    i00 = _inv16(_a16(k, beta, t0, L, 0, 0, i_h, H, K, BK))
    _store16(ainv, i00, t0, L, 0, 0, i_h, H, BT)
    _store16(ainv, zero, t0, L, 0, 1, i_h, H, BT)
    i11 = _inv16(_a16(k, beta, t0, L, 1, 1, i_h, H, K, BK))
    i10 = -_mm32(i11, _mm32(_a16(k, beta, t0, L, 1, 0, i_h, H, K, BK), i00))
    _store16(ainv, i10, t0, L, 1, 0, i_h, H, BT)
    _store16(ainv, i11, t0, L, 1, 1, i_h, H, BT)
    if BT == 64:
        _store16(ainv, zero, t0, L, 0, 2, i_h, H, BT)
        _store16(ainv, zero, t0, L, 0, 3, i_h, H, BT)
        _store16(ainv, zero, t0, L, 1, 2, i_h, H, BT)
        _store16(ainv, zero, t0, L, 1, 3, i_h, H, BT)
        i22 = _inv16(_a16(k, beta, t0, L, 2, 2, i_h, H, K, BK))
        a21 = _a16(k, beta, t0, L, 2, 1, i_h, H, K, BK)
        i21 = -_mm32(i22, _mm32(a21, i11))
        s20 = _mm32(_a16(k, beta, t0, L, 2, 0, i_h, H, K, BK), i00) + _mm32(a21, i10)
        i20 = -_mm32(i22, s20)
        _store16(ainv, i20, t0, L, 2, 0, i_h, H, BT)
        _store16(ainv, i21, t0, L, 2, 1, i_h, H, BT)
        _store16(ainv, i22, t0, L, 2, 2, i_h, H, BT)
        _store16(ainv, zero, t0, L, 2, 3, i_h, H, BT)
        i33 = _inv16(_a16(k, beta, t0, L, 3, 3, i_h, H, K, BK))
        a32 = _a16(k, beta, t0, L, 3, 2, i_h, H, K, BK)
        a31 = _a16(k, beta, t0, L, 3, 1, i_h, H, K, BK)
        i32 = -_mm32(i33, _mm32(a32, i22))
        i31 = -_mm32(i33, _mm32(a31, i11) + _mm32(a32, i21))
        s30 = _mm32(_a16(k, beta, t0, L, 3, 0, i_h, H, K, BK), i00)
        i30 = -_mm32(i33, s30 + _mm32(a31, i10) + _mm32(a32, i20))
        _store16(ainv, i30, t0, L, 3, 0, i_h, H, BT)
        _store16(ainv, i31, t0, L, 3, 1, i_h, H, BT)
        _store16(ainv, i32, t0, L, 3, 2, i_h, H, BT)
        _store16(ainv, i33, t0, L, 3, 3, i_h, H, BT)


@triton.autotune(configs=autotune_configs({}, num_warps=[4, 8], num_stages=[2]), key=["K", "V", "BK", "BV"])
@triton.jit(do_not_specialize=["T"])
def _wy_apply_kernel(
    k, v, beta, ainv, w, u, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """W = Ainv diag(beta) K and U = Ainv diag(beta) V from the stored inverse (forward, and the backward's
    recompute): one [BT, BT] x [BT, D] tensor-core dot per tile."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    DT = k.dtype.element_ty

    o_t = tl.arange(0, BT)
    rows = t0 + o_t  # token indices of this chunk (int64)
    m_t = o_t < L
    o_k = tl.arange(0, BK)
    m_k = o_k < K

    b_a = tl.load(ainv + (rows[:, None] * H + i_h) * BT + o_t[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_b = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
    b_kb = (b_k.to(tl.float32) * b_b[:, None]).to(DT)  # diag(beta) K   [BT, BK]
    b_w = _mm(b_a, b_kb)  # W = Ainv diag(beta) K
    tl.store(w + (rows[:, None] * H + i_h) * K + o_k[None, :], b_w.to(w.dtype.element_ty),
             mask=m_t[:, None] & m_k[None, :])
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0)
        b_vb = (b_v.to(tl.float32) * b_b[:, None]).to(DT)
        b_u = _mm(b_a, b_vb)  # U = Ainv diag(beta) V
        tl.store(u + (rows[:, None] * H + i_h) * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------
# 2. chunk states (sequential over the chunks of one sequence)
# ----------------------------------------------------------------------------------------------


@triton.autotune(configs=autotune_configs({"BV": [32, 64]}, num_warps=[4], num_stages=[2, 3]), key=["K", "V", "BK"])
@triton.jit(do_not_specialize=["T"])
def _state_fwd_kernel(
    k, w, u, h0, h, vnew, ht, cu_seqlens, chunk_off, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)  # sequences x heads on grid x (no 65535 cap)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_span(cu_seqlens, chunk_off, i_n, BT, T, IS_VARLEN)
    nt = tl.cdiv(eos - bos, BT).to(tl.int32)
    DT = k.dtype.element_ty

    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_nh * K * V + p_state, mask=m_kv, other=0.0)
    for i_t in range(0, nt):
        tl.store(h + ((c0 + i_t) * H + i_h) * K * V + p_state, b_h.to(h.dtype.element_ty), mask=m_kv)  # S entering
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        b_w = tl.load(w + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_u = tl.load(u + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_vn = b_u.to(tl.float32) - _mm(b_w.to(DT), b_h.to(DT))  # U - W S
        tl.store(vnew + (rows[:, None] * H + i_h) * V + o_v[None, :], b_vn.to(vnew.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_h += _mm(tl.trans(b_k.to(DT)), b_vn.to(DT))  # S += K^T V_new
    if STORE_HT:
        tl.store(ht + i_nh * K * V + p_state, b_h, mask=m_kv)


# ----------------------------------------------------------------------------------------------
# 3. outputs (parallel over chunks)
# ----------------------------------------------------------------------------------------------


@triton.autotune(configs=autotune_configs({}, num_warps=[4, 8], num_stages=[2]), key=["K", "V", "BK", "BV"],
                 prune_configs_by={"early_config_prune": hopper_prune([4])})
@triton.jit(do_not_specialize=["T"])
def _output_fwd_kernel(
    q, k, vnew, h, o, scale, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # chunks on grid x
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    DT = k.dtype.element_ty

    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = o_t < L
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]

    b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
    b_q = (b_q.to(tl.float32) * scale).to(DT)
    b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
    b_s = _mm(b_q, tl.trans(b_k))
    b_s = tl.where(o_t[:, None] >= o_t[None, :], b_s, 0.0)  # tril(Q K^T), diagonal kept
    b_h = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.0)
    b_vn = tl.load(vnew + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0)
    b_o = _mm(b_q, b_h.to(DT))
    b_o += _mm(b_s.to(DT), b_vn.to(DT))
    tl.store(o + (rows[:, None] * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------
# 4. backward through the chunk states: the local part in parallel, then a sequential pass of 3 dots
# ----------------------------------------------------------------------------------------------


@triton.autotune(configs=autotune_configs({}, num_warps=[4], num_stages=[2]), key=["K", "V", "BK", "BV"])
@triton.jit(do_not_specialize=["T"])
def _dv_local_kernel(
    q, k, do, dvl, scale, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """The state-independent part of dV_new: tril(Q K^T)^T dO (parallel over chunks, V tiles, heads)."""
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    DT = k.dtype.element_ty
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = o_t < L
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
        b_s += _mm(b_k, tl.trans(b_q))  # (Q K^T)^T
    b_s = tl.where(o_t[:, None] <= o_t[None, :], b_s * scale, 0.0).to(DT)  # tril(Q K^T)^T
    o_v = i_v * BV + tl.arange(0, BV)
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    b_do = tl.load(do + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
    tl.store(dvl + (rows[:, None] * H + i_h) * V + o_v[None, :], _mm(b_s, b_do).to(dvl.dtype.element_ty),
             mask=m_tv)


@triton.autotune(configs=autotune_configs({"BV": [32, 64]}, num_warps=[4], num_stages=[2, 3],
                                         skip=lambda m, w, s: m["BV"] == 64 and s == 3),  # spills at K = 128
                 key=["K", "V", "BK"])
@triton.jit(do_not_specialize=["T"])
def _state_bwd_kernel(
    q, k, w, do, dvl, dht, dh, dvnew, dh0, scale, cu_seqlens, chunk_off, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Chunks in reverse with dS' (the gradient of the state leaving the chunk) in fp32 registers:
    dV_new = dV_local + K dS';  dS = dS' + Q^T dO - W^T dV_new. dS' and dV_new are stored in the input dtype."""
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0 = seq_span(cu_seqlens, chunk_off, i_n, BT, T, IS_VARLEN)
    nt = tl.cdiv(eos - bos, BT).to(tl.int32)
    DT = k.dtype.element_ty

    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)  # dS': gradient of the state leaving the chunk
    if USE_DHT:
        b_dh += tl.load(dht + i_nh * K * V + p_state, mask=m_kv, other=0.0)
    for j in range(0, nt):
        i_t = nt - 1 - j
        tl.store(dh + ((c0 + i_t) * H + i_h) * K * V + p_state, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
        b_du = tl.load(dvl + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_du += _mm(b_k, b_dh.to(DT))  # dV_new = dV_local + K dS'
        tl.store(dvnew + (rows[:, None] * H + i_h) * V + o_v[None, :], b_du.to(dvnew.dtype.element_ty), mask=m_tv)
        b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_q = (b_q.to(tl.float32) * scale).to(DT)
        b_w = tl.load(w + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
        b_do = tl.load(do + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_dh += _mm(tl.trans(b_q), b_do)  # dS = dS' + Q^T dO - W^T dV_new
        b_dh -= _mm(tl.trans(b_w), b_du.to(DT))
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + p_state, b_dh, mask=m_kv)


# ----------------------------------------------------------------------------------------------
# 5. gradients of q, k, v, beta (parallel over chunks), in two kernels that fit in registers
# ----------------------------------------------------------------------------------------------


@triton.autotune(configs=autotune_configs({}, num_warps=[4, 8], num_stages=[2]), key=["K", "V", "BK", "BV"])
@triton.jit(do_not_specialize=["T"])
def _dqkw_bwd_kernel(
    q, k, h, vnew, do, dh, dvnew, dq, dk, dw, scale, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Per (chunk, K tile, head), looping over V tiles: dq (final), the state part of dk, and
    dW = -dV_new S^T. With P = tril(Q K^T): dq = scale (dO S^T + mask(dO V_new^T) K),
    dk_state = V_new dS'^T + mask(dO V_new^T)^T Q scale."""
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    DT = k.dtype.element_ty
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = o_t < L
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    base_h = (i_c.to(tl.int64) * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # dO S^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # V_new dS'^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # -dV_new S^T
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)  # dO V_new^T (masked below)
    b_dpt = tl.zeros([BT, BT], dtype=tl.float32)  # its transpose, accumulated directly (see README: Hopper)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
        p_kv = base_h + o_k[:, None] * V + o_v[None, :]
        b_h = tl.load(h + p_kv, mask=m_k[:, None] & m_v[None, :], other=0.0).to(DT)  # S    [BK, BV]
        b_dh = tl.load(dh + p_kv, mask=m_k[:, None] & m_v[None, :], other=0.0).to(DT)  # dS'  [BK, BV]
        b_vn = tl.load(vnew + p_tv, mask=m_tv, other=0.0).to(DT)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(DT)
        b_du = tl.load(dvnew + p_tv, mask=m_tv, other=0.0).to(DT)
        b_dq += _mm(b_do, tl.trans(b_h))
        b_dp += _mm(b_do, tl.trans(b_vn))
        b_dpt += _mm(b_vn, tl.trans(b_do))
        b_dk += _mm(b_vn, tl.trans(b_dh))
        b_dw -= _mm(b_du, tl.trans(b_h))
    b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
    b_q = (b_q.to(tl.float32) * scale).to(DT)
    b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(DT)
    b_dp = tl.where(o_t[:, None] >= o_t[None, :], b_dp, 0.0).to(DT)
    b_dpt = tl.where(o_t[:, None] <= o_t[None, :], b_dpt, 0.0).to(DT)
    b_dq += _mm(b_dp, b_k)
    b_dk += _mm(b_dpt, b_q)
    p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
    tl.store(dq + p_tk, (b_dq * scale).to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dw + p_tk, b_dw.to(dw.dtype.element_ty), mask=m_tk)


# dk is read and written in place (the state part from _dqkw_bwd plus this part): autotune timing runs must
# leave it as it was, hence restore_value.
@triton.autotune(configs=autotune_configs({}, num_warps=[4, 8], num_stages=[2]), key=["K", "V", "BK", "BV"],
                 prune_configs_by={"early_config_prune": hopper_prune([8])}, restore_value=["dk"])
@triton.jit(do_not_specialize=["T"])
def _wy_bwd_kernel(
    k, v, beta, ainv, dw, dvnew, dk, dv, dbeta, cu_seqlens, chunk_idx, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Back through W = Ainv diag(b) K, U = Ainv diag(b) V and Ainv = (I + A)^{-1}, A = strict_tril(diag(b) K K^T),
    per (chunk, head), K and V in tiles: dv, dbeta, and dk (added to the state part ``dk`` holds)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, L = chunk_span(chunk_idx, cu_seqlens, i_c, BT, T, IS_VARLEN)
    DT = k.dtype.element_ty
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = o_t < L
    b_b = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_a = tl.load(ainv + (rows[:, None] * H + i_h) * BT + o_t[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_at = tl.trans(b_a)  # Ainv^T (a transposed load, not a transposed dot result)
    b_dt = tl.zeros([BT, BT], dtype=tl.float32)  # dAinv = dU (diag(b) V)^T + dW (diag(b) K)^T
    b_dtt = tl.zeros([BT, BT], dtype=tl.float32)  # dAinv^T, accumulated directly (no tl.trans of a dot result)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)  # K K^T
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_du = tl.load(dvnew + p_tv, mask=m_tv, other=0.0).to(DT)
        b_vb = (b_v * b_b[:, None]).to(DT)
        b_dt += _mm(b_du, tl.trans(b_vb))
        b_dtt += _mm(b_vb, tl.trans(b_du))
        b_dvb = _mm(b_at, b_du)  # d(diag(b) V) = Ainv^T dU
        tl.store(dv + p_tv, (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v, 1)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(DT)
        b_dw = tl.load(dw + p_tk, mask=m_tk, other=0.0).to(DT)
        b_kk += _mm(b_k, tl.trans(b_k))
        b_kb = (b_k.to(tl.float32) * b_b[:, None]).to(DT)
        b_dt += _mm(b_dw, tl.trans(b_kb))
        b_dtt += _mm(b_kb, tl.trans(b_dw))
        b_dkb = _mm(b_at, b_dw)  # d(diag(b) K) = Ainv^T dW
        b_db += tl.sum(b_dkb * b_k.to(tl.float32), 1)
    # Ainv = (I + A)^{-1}  =>  dA = -Ainv^T dAinv Ainv^T; only the strictly lower part is a function of K, b
    b_da = _mm(b_at, b_dt.to(DT))
    b_da = -_mm(b_da.to(DT), b_at)
    b_da = tl.where(o_t[:, None] > o_t[None, :], b_da, 0.0)
    b_dat = -_mm(_mm(b_a, b_dtt.to(DT)).to(DT), b_a)  # dA^T = -Ainv dAinv^T Ainv
    b_dat = tl.where(o_t[:, None] < o_t[None, :], b_dat, 0.0)
    b_db += tl.sum(b_da * b_kk, 1)
    b_bda = (b_da * b_b[:, None]).to(DT)  # diag(b) dA
    b_bdat = (b_dat * b_b[None, :]).to(DT)  # (diag(b) dA)^T
    tl.store(dbeta + rows * H + i_h, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(DT)
        b_dw = tl.load(dw + p_tk, mask=m_tk, other=0.0).to(DT)
        b_dk = tl.load(dk + p_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_dk += _mm(b_at, b_dw) * b_b[:, None]  # diag(b) d(diag(b) K)
        b_dk += _mm(b_bda, b_k) + _mm(b_bdat, b_k)  # A = strict_tril(diag(b) K K^T)
        tl.store(dk + p_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def _dims(k, v):
    K, V = k.shape[-1], v.shape[-1]
    BK = _block(K)
    return K, V, BK, min(_block(V), 64 if BK <= 128 else 32)


class _Layout:
    """Where the sequences are: dense ``[B, T]`` (indexed directly, no tables, nothing read from the host) or
    packed (``cu`` int32, chunk table ``cidx`` [NC, 2], chunk offsets ``coff`` built on the device)."""

    def __init__(self, B: int, T: int, bt: int, cu_seqlens=None, cu_seqlens_cpu=None):
        self.bt = bt
        if cu_seqlens is None:
            self.varlen, self.T, self.N = False, T, B
            self.cu = self.cidx = self.coff = None
            self.NC = B * ceil_div(T, bt)
        else:
            self.varlen, self.T = True, 0
            self.cu, self.cidx, self.coff = varlen_chunk_tables(cu_seqlens, bt, cu_seqlens_cpu)
            self.N, self.NC = self.cu.numel() - 1, self.cidx.shape[0]

    def chunk_args(self):
        return dict(cu_seqlens=self.cu, chunk_idx=self.cidx, T=self.T, IS_VARLEN=self.varlen)

    def seq_args(self):
        return dict(cu_seqlens=self.cu, chunk_off=self.coff, T=self.T, IS_VARLEN=self.varlen)


def _wy_solve(k, beta, lay):
    """k [T, H, K], beta [T, H] -> Ainv [T, H, BT] in k's dtype (row t holds its chunk's row of the inverse)."""
    T, H, K = k.shape
    ainv = k.new_empty(T, H, lay.bt)
    _wy_solve_kernel[(lay.NC, H)](k, beta, ainv, **lay.chunk_args(), H=H, K=K, BT=lay.bt, BK=_block(K))
    return ainv


def _wy_apply(k, v, beta, ainv, lay):
    """-> W [T, H, K], U [T, H, V] (input dtype) from the stored inverse."""
    T, H, K = k.shape
    V = v.shape[-1]
    _, _, BK, BV = _dims(k, v)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    _wy_apply_kernel[(lay.NC, H)](k, v, beta, ainv, w, u, **lay.chunk_args(),
                                  H=H, K=K, V=V, BT=lay.bt, BK=BK, BV=BV)
    return w, u


def _state_fwd(k, w, u, h0, lay, store_ht):
    """-> h [NC, H, K, V] (state entering each chunk, input dtype), V_new [T, H, V], final state [N, H, K, V] fp32."""
    T, H, K = k.shape
    V = u.shape[-1]
    N = lay.N
    BK = _block(K)
    h = k.new_empty(lay.NC, H, K, V)  # input dtype; the running state stays fp32 in registers
    vnew = torch.empty_like(u)
    ht = k.new_empty(N, H, K, V, dtype=torch.float32) if store_ht else None

    def grid(meta):
        return (N * H, triton.cdiv(V, meta["BV"]))

    _state_fwd_kernel[grid](k, w, u, h0, h, vnew, ht, **lay.seq_args(), H=H, K=K, V=V, BT=lay.bt, BK=BK,
                            USE_H0=h0 is not None, STORE_HT=store_ht)
    return h, vnew, ht


def _output_fwd(q, k, vnew, h, scale, lay):
    T, H, K = q.shape
    V = vnew.shape[-1]
    _, _, BK, BV = _dims(k, vnew)
    o = torch.empty_like(vnew)
    _output_fwd_kernel[(lay.NC, triton.cdiv(V, BV), H)](q, k, vnew, h, o, scale, **lay.chunk_args(),
                                                         H=H, K=K, V=V, BT=lay.bt, BK=BK, BV=BV)
    return o


def _state_bwd(q, k, w, do, dht, scale, lay, store_dh0):
    """-> dh [NC, H, K, V] (grad of the state leaving each chunk) and dV_new [T, H, V], both in the input
    dtype, and dh0 [N, H, K, V] fp32."""
    T, H, K = q.shape
    V = do.shape[-1]
    N = lay.N
    _, _, BK, BV = _dims(k, do)
    dvl = torch.empty_like(do, dtype=q.dtype)
    _dv_local_kernel[(lay.NC, triton.cdiv(V, BV), H)](q, k, do, dvl, scale, **lay.chunk_args(),
                                                       H=H, K=K, V=V, BT=lay.bt, BK=min(BK, 64), BV=BV)
    dh = q.new_empty(lay.NC, H, K, V)
    dvnew = torch.empty_like(dvl)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if store_dh0 else None

    def grid(meta):
        return (N * H, triton.cdiv(V, meta["BV"]))

    _state_bwd_kernel[grid](q, k, w, do, dvl, dht, dh, dvnew, dh0, scale, **lay.seq_args(),
                            H=H, K=K, V=V, BT=lay.bt, BK=BK, USE_DHT=dht is not None, STORE_DH0=store_dh0)
    return dh, dvnew, dh0


def _grads_bwd(q, k, v, beta, ainv, h, vnew, do, dh, dvnew, scale, lay):
    """dq, dk, dv, dbeta in two kernels: _dqkw_bwd (dq, the state part of dk, dW) then _wy_bwd."""
    T, H, K = q.shape
    V = v.shape[-1]
    _, _, BK, BV = _dims(k, v)
    BKt = min(BK, 64)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dw = torch.empty_like(k)
    dbeta = torch.empty_like(beta)
    _dqkw_bwd_kernel[(lay.NC, triton.cdiv(K, BKt), H)](q, k, h, vnew, do, dh, dvnew, dq, dk, dw, scale,
                                                        **lay.chunk_args(), H=H, K=K, V=V, BT=lay.bt, BK=BKt, BV=BV)
    _wy_bwd_kernel[(lay.NC, H)](k, v, beta, ainv, dw, dvnew, dk, dv, dbeta, **lay.chunk_args(),
                                H=H, K=K, V=V, BT=lay.bt, BK=BKt, BV=BV)
    return dq, dk, dv, dbeta


class DeltaRuleChunkFunction(torch.autograd.Function):
    """Packed inputs: q, k [T, H, K]; v [T, H, V]; beta [T, H]; h0 [N, H, K, V] fp32 or None; ``lay`` the
    sequence layout (:class:`_Layout`)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, h0, scale, lay):
        ainv = _wy_solve(k, beta, lay)
        w, u = _wy_apply(k, v, beta, ainv, lay)
        h, vnew, ht = _state_fwd(k, w, u, h0, lay, True)
        o = _output_fwd(q, k, vnew, h, scale, lay)
        ctx.save_for_backward(q, k, v, beta, h0, ainv)  # Ainv: T*H*BT in the input dtype
        ctx.scale, ctx.lay = scale, lay
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, h0, ainv = ctx.saved_tensors
        scale, lay = ctx.scale, ctx.lay
        if do is None:
            do = torch.zeros_like(v)
        do = do.contiguous()
        dht = dht.contiguous().float() if dht is not None else None
        # recompute the forward's intermediates (the inverse is saved: only W, U and the states)
        w, u = _wy_apply(k, v, beta, ainv, lay)
        h, vnew, _ = _state_fwd(k, w, u, h0, lay, False)
        dh, dvnew, dh0 = _state_bwd(q, k, w, do, dht, scale, lay, h0 is not None and ctx.needs_input_grad[4])
        dq, dk, dv, dbeta = _grads_bwd(q, k, v, beta, ainv, h, vnew, do, dh, dvnew, scale, lay)
        return dq, dk, dv, dbeta, dh0, None, None


def delta_rule_triton_chunk(q, k, v, beta, scale, initial_state=None, cu_seqlens=None, cu_seqlens_cpu=None):
    """Inputs already checked (``seqzoo.kernels.delta_rule``); returns ``(o [B, T, H, V], final [N, H, K, V])``.
    Dense inputs make no host transfer; packed ones read ``NC`` from ``cu_seqlens_cpu`` when given (else one
    device->host copy of ``cu_seqlens``)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    lay = _Layout(B, T, chunk_size(K), cu_seqlens, cu_seqlens_cpu)
    qp, kp, vp = (x.reshape(B * T, H, x.shape[-1]).contiguous() for x in (q, k, v))
    bp = beta.reshape(B * T, H).contiguous()
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    o, ht = DeltaRuleChunkFunction.apply(qp, kp, vp, bp, h0, float(scale), lay)
    return o.reshape(B, T, H, V), ht
