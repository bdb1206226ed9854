"""Chunked selective scan in Triton: forward and backward kernels in one ``torch.autograd.Function``.

Tokens of every sequence are cut into chunks of ``BT = 16``. A program holds a ``[BT, BD, N]`` block (tokens ×
channels × state columns) in registers and runs the chunk's recurrence as a parallel prefix scan
(``tl.associative_scan`` with the combine ``(a₁, b₁)·(a₂, b₂) = (a₁a₂, a₂b₁ + b₂)``). Padded tokens (past a
sequence's end) load ``Δ = 0``: they neither decay nor write. Δ (fp32, after bias and softplus) is an input of
the Function; the bias, the softplus and the gate ``z`` are differentiated by torch around it. README.md has the
equations. With ``w_t = Δ_t u_t B_t`` and ``a_t = exp(Δ_t A)``:

forward   ``_fwd_local`` per (chunk, channel block): the chunk's end state from zero, and ``Σ_chunk Δ``.
          ``_fwd_pass``  per (sequence, channel block): walks the chunks; the state entering each one, the final.
          ``_fwd_out``   per (chunk, channel block): ``x_t = local_t + exp(A cumΔ_t) S_in``, ``y = C·x + D u``.
backward  ``_bwd_local`` per (chunk, channel block): the reverse scan ``g_t = a_{t+1} g_{t+1} + C_t dy_t`` from
                         zero, and what the chunk's outputs send back to its entering state.
          ``_bwd_pass``  per (sequence, channel block): walks the chunks backwards; the gradient of the state
                         leaving each chunk, and of the initial state.
          ``_bwd_grads`` per (chunk, channel block): full ``x_t`` and ``g_t``, then with ``dlog a_t = g_t ⊙ (x_t − w_t)``
                         (no division): du, dΔ, and partial sums of dA, dB, dC over the block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, interpreter_active, next_power_of_2
from .._chunk import chunk_indices, chunk_offsets, uniform_cu_seqlens
from .._triton_utils import INTERPRETED, chunk_span
from .reference import discretize_delta

BT = 16  # tokens per chunk
BLOCK_ELEMS = 2048  # BT * BD * BN: the register block of one program

_CFG = dict(grid={}, num_warps=[4], num_stages=[1])
_KEY = ["Dm", "G", "N", "BD", "BN"]


def _blocks(Dm: int, G: int, N: int) -> tuple[int, int]:
    BN = next_power_of_2(N)
    elems = 8 * BLOCK_ELEMS if interpreter_active() else BLOCK_ELEMS  # the interpreter pays per program
    BD = max(1, min(next_power_of_2(Dm // G), elems // (BT * BN)))
    return BD, BN


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan(log_a, b, BT: tl.constexpr, REVERSE: tl.constexpr):
    """Along axis 0 of ``[BT, BD, BN]``: ``s_t = a_t s_{t-1} + b_t`` (or ``s_t = a_t s_{t+1} + b_t`` with
    ``REVERSE``), ``a = exp(log_a)``, from a zero state.

    Compiled: ``tl.associative_scan``. The CPU interpreter calls a scan's combine function once per element pair
    in Python (minutes per test) and pays ~1 ms per device-function call, so there the scan is its closed form,
    ``s_t = Σ_{j ≤ t} exp(L_t − L_j) b_j`` with ``L`` the cumsum of ``log_a`` (reverse: ``Σ_{j ≥ t}
    exp(E_j − E_t) b_j``, ``E`` the exclusive cumsum), as one sum over a ``[BT, BT, BD, BN]`` block."""
    if INTERPRETED:
        o_t = tl.arange(0, BT)
        L = tl.cumsum(log_a, axis=0)
        if REVERSE:
            L = L - log_a
            keep = (o_t[None, :] >= o_t[:, None])[:, :, None, None]  # [t, j]: j ≥ t
            expo = L[None, :, :, :] - L[:, None, :, :]
        else:
            keep = (o_t[None, :] <= o_t[:, None])[:, :, None, None]  # j ≤ t
            expo = L[:, None, :, :] - L[None, :, :, :]
        w = tl.where(keep, tl.exp(tl.where(keep, expo, 0.0)), 0.0)
        return tl.sum(w * b[None, :, :, :], axis=1)
    else:
        _, out = tl.associative_scan((tl.exp(log_a), b), 0, _combine, reverse=REVERSE)
        return out


@triton.jit
def _load_block(delta, u, B, A, t0, L, i_g, o_d, m_d, o_n,
                Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr):
    """Δ [BT, BD] (0 past L), u [BT, BD], B [BT, BN], A [BD, BN] for one chunk and channel block, in fp32."""
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    m_td = m_t[:, None] & m_d[None, :]
    m_n = o_n < N
    b_dt = tl.load(delta + (t0 + o_t[:, None]) * Dm + o_d[None, :], mask=m_td, other=0.0)
    b_u = tl.load(u + (t0 + o_t[:, None]) * Dm + o_d[None, :], mask=m_td, other=0.0).to(tl.float32)
    b_B = tl.load(B + (t0 + o_t[:, None]) * G * N + i_g * N + o_n[None, :], mask=m_t[:, None] & m_n[None, :],
                  other=0.0).to(tl.float32)
    b_A = tl.load(A + o_d[:, None] * N + o_n[None, :], mask=m_d[:, None] & m_n[None, :], other=0.0)
    return b_dt, b_u, b_B, b_A


@triton.jit
def _channels(i_gd, Dm: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    """Program axis 1 enumerates (group, channel block within the group): blocks never straddle two groups."""
    NDB: tl.constexpr = (Dm // G + BD - 1) // BD
    i_g, i_db = i_gd // NDB, i_gd % NDB
    o_dd = i_db * BD + tl.arange(0, BD)
    return i_g, i_db, i_g * (Dm // G) + o_dd, o_dd < Dm // G


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _fwd_local(delta, u, B, A, s_end, dsum, cu, chunk_tab,
               Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
               BN: tl.constexpr):
    i_c, i_gd = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g, i_db, o_d, m_d = _channels(i_gd, Dm, G, BD)
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    b_dt, b_u, b_B, b_A = _load_block(delta, u, B, A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    b_w = (b_dt * b_u)[:, :, None] * b_B[:, None, :]  # [BT, BD, BN]
    b_s = _scan(b_dt[:, :, None] * b_A[None, :, :], b_w, BT, False)
    b_end = tl.sum(tl.where((o_t == BT - 1)[:, None, None], b_s, 0.0), axis=0)  # padded steps are identities
    m_dn = m_d[:, None] & (o_n[None, :] < N)
    tl.store(s_end + i_c * Dm * N + o_d[:, None] * N + o_n[None, :], b_end, mask=m_dn)
    tl.store(dsum + i_c * Dm + o_d, tl.sum(b_dt, axis=0), mask=m_d)


@triton.jit
def _fwd_pass(A, s_end, dsum, h, h0, ht, cu, chunk_offs,
              Dm: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
              USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_n, i_d = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    boc = tl.load(chunk_offs + i_n).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_dn = (o_d[:, None] < Dm) & (o_n[None, :] < N)
    p_dn = o_d[:, None] * N + o_n[None, :]
    b_A = tl.load(A + p_dn, mask=m_dn, other=0.0)
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * Dm * N + p_dn, mask=m_dn, other=0.0).to(tl.float32)
    for c in range(0, tl.cdiv(eos - bos, BT)):
        tl.store(h + (boc + c) * Dm * N + p_dn, b_h, mask=m_dn)
        b_sum = tl.load(dsum + (boc + c) * Dm + o_d, mask=o_d < Dm, other=0.0)
        b_h = tl.exp(b_A * b_sum[:, None]) * b_h + tl.load(s_end + (boc + c) * Dm * N + p_dn, mask=m_dn, other=0.0)
    if STORE_FINAL:
        tl.store(ht + i_n * Dm * N + p_dn, b_h, mask=m_dn)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _fwd_out(delta, u, B, C, A, D, h, y, cu, chunk_tab,
             Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
             BN: tl.constexpr, HAS_D: tl.constexpr):
    i_c, i_gd = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g, i_db, o_d, m_d = _channels(i_gd, Dm, G, BD)
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    b_dt, b_u, b_B, b_A = _load_block(delta, u, B, A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    b_C = tl.load(C + (t0 + o_t[:, None]) * G * N + i_g * N + o_n[None, :],
                  mask=m_t[:, None] & (o_n[None, :] < N), other=0.0).to(tl.float32)
    b_w = (b_dt * b_u)[:, :, None] * b_B[:, None, :]
    b_s = _scan(b_dt[:, :, None] * b_A[None, :, :], b_w, BT, False)
    b_hin = tl.load(h + i_c * Dm * N + o_d[:, None] * N + o_n[None, :],
                    mask=m_d[:, None] & (o_n[None, :] < N), other=0.0)
    b_x = b_s + tl.exp(tl.cumsum(b_dt, axis=0)[:, :, None] * b_A[None, :, :]) * b_hin[None, :, :]
    b_y = tl.sum(b_x * b_C[:, None, :], axis=2)  # [BT, BD]
    if HAS_D:
        b_y += tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :] * b_u
    tl.store(y + (t0 + o_t[:, None]) * Dm + o_d[None, :], b_y.to(y.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _reverse_local(delta, C, dy, b_A, t0, L, i_g, o_d, m_d, o_n,
                   Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr):
    """g_t = a_{t+1} g_{t+1} + C_t dy_t inside the chunk from a zero gradient after its end: [BT, BD, BN]."""
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    m_next = (o_t + 1) < L
    b_dt_next = tl.load(delta + (t0 + o_t[:, None] + 1) * Dm + o_d[None, :], mask=m_next[:, None] & m_d[None, :],
                        other=0.0)
    b_C = tl.load(C + (t0 + o_t[:, None]) * G * N + i_g * N + o_n[None, :],
                  mask=m_t[:, None] & (o_n[None, :] < N), other=0.0).to(tl.float32)
    b_dy = tl.load(dy + (t0 + o_t[:, None]) * Dm + o_d[None, :], mask=m_t[:, None] & m_d[None, :],
                   other=0.0).to(tl.float32)
    b_g = _scan(b_dt_next[:, :, None] * b_A[None, :, :], b_dy[:, :, None] * b_C[:, None, :], BT, True)
    return b_g, b_C, b_dy


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _bwd_local(delta, u, B, C, A, dy, dh_local, cu, chunk_tab,
               Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
               BN: tl.constexpr):
    i_c, i_gd = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g, i_db, o_d, m_d = _channels(i_gd, Dm, G, BD)
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    b_dt, b_u, b_B, b_A = _load_block(delta, u, B, A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    b_g, b_C, b_dy = _reverse_local(delta, C, dy, b_A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    # the chunk's outputs reach its entering state through a_{t0}: dS_in = a_{t0} g_{t0}
    b_first = tl.sum(tl.where((o_t == 0)[:, None, None], tl.exp(b_dt[:, :, None] * b_A[None, :, :]) * b_g, 0.0),
                     axis=0)
    tl.store(dh_local + i_c * Dm * N + o_d[:, None] * N + o_n[None, :], b_first,
             mask=m_d[:, None] & (o_n[None, :] < N))


@triton.jit
def _bwd_pass(A, dh_local, dsum, dh, dht, dh0, cu, chunk_offs,
              Dm: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
              USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
    i_n, i_d = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    boc = tl.load(chunk_offs + i_n).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_dn = (o_d[:, None] < Dm) & (o_n[None, :] < N)
    p_dn = o_d[:, None] * N + o_n[None, :]
    b_A = tl.load(A + p_dn, mask=m_dn, other=0.0)
    b_dh = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_n * Dm * N + p_dn, mask=m_dn, other=0.0).to(tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        tl.store(dh + (boc + c) * Dm * N + p_dn, b_dh, mask=m_dn)  # gradient of the state leaving chunk c
        b_sum = tl.load(dsum + (boc + c) * Dm + o_d, mask=o_d < Dm, other=0.0)
        b_dh = tl.exp(b_A * b_sum[:, None]) * b_dh + tl.load(dh_local + (boc + c) * Dm * N + p_dn, mask=m_dn,
                                                             other=0.0)
    if STORE_DH0:
        tl.store(dh0 + i_n * Dm * N + p_dn, b_dh, mask=m_dn)


@triton.autotune(configs=autotune_configs(**_CFG), key=_KEY)
@triton.jit
def _bwd_grads(delta, u, B, C, A, D, dy, h, dh, dsum, du, ddelta, dA_part, dB_part, dC_part, cu, chunk_tab,
               Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
               BN: tl.constexpr, HAS_D: tl.constexpr):
    i_c, i_gd = tl.program_id(0), tl.program_id(1)
    i_n, t0, L = chunk_span(chunk_tab, cu, i_c, BT)
    i_g, i_db, o_d, m_d = _channels(i_gd, Dm, G, BD)
    NDB: tl.constexpr = (Dm // G + BD - 1) // BD
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    m_t = o_t < L
    m_n = o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    b_dt, b_u, b_B, b_A = _load_block(delta, u, B, A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    # forward states x_t = local_t + exp(A cumΔ_t) S_in
    b_w = (b_dt * b_u)[:, :, None] * b_B[:, None, :]
    b_s = _scan(b_dt[:, :, None] * b_A[None, :, :], b_w, BT, False)
    p_state = i_c * Dm * N + o_d[:, None] * N + o_n[None, :]
    b_cum = tl.cumsum(b_dt, axis=0)  # [BT, BD]
    b_x = b_s + tl.exp(b_cum[:, :, None] * b_A[None, :, :]) * tl.load(h + p_state, mask=m_dn, other=0.0)[None, :, :]
    # state gradients g_t = local reverse scan + exp(A (ΣΔ − cumΔ_t)) dS_out
    b_g, b_C, b_dy = _reverse_local(delta, C, dy, b_A, t0, L, i_g, o_d, m_d, o_n, Dm, G, N, BT)
    b_sum = tl.load(dsum + i_c * Dm + o_d, mask=m_d, other=0.0)
    b_g += tl.exp((b_sum[None, :] - b_cum)[:, :, None] * b_A[None, :, :]) * tl.load(dh + p_state, mask=m_dn,
                                                                                   other=0.0)[None, :, :]
    b_dlog = b_g * (b_x - b_w)  # gradient of log a_t = Δ_t A (a_t x_{t-1} = x_t − w_t)
    b_gB = tl.sum(b_g * b_B[:, None, :], axis=2)  # [BT, BD]
    b_ddt = tl.sum(b_dlog * b_A[None, :, :], axis=2) + b_gB * b_u
    b_du = b_gB * b_dt
    if HAS_D:
        b_du += tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :] * b_dy
    m_td = m_t[:, None] & m_d[None, :]
    p_td = (t0 + o_t[:, None]) * Dm + o_d[None, :]
    tl.store(du + p_td, b_du.to(du.dtype.element_ty), mask=m_td)
    tl.store(ddelta + p_td, b_ddt, mask=m_td)
    tl.store(dA_part + p_state, tl.sum(b_dlog * b_dt[:, :, None], axis=0), mask=m_dn)
    # B and C are shared by the group's channels: partial sums per channel block, reduced by torch
    m_tn = m_t[:, None] & m_n[None, :]
    p_part = ((t0 + o_t[:, None]) * NDB + i_db) * G * N + i_g * N + o_n[None, :]
    tl.store(dB_part + p_part, tl.sum(b_g * (b_dt * b_u)[:, :, None], axis=1), mask=m_tn)
    tl.store(dC_part + p_part, tl.sum(b_x * b_dy[:, :, None], axis=1), mask=m_tn)


def chunk_tables(cu_seqlens, batch: int, seq_len: int, device):
    if cu_seqlens is None:
        cu = uniform_cu_seqlens(batch, seq_len, device="cpu")  # built on the host: no device sync
        return cu.to(device), chunk_indices(cu, BT).to(device), chunk_offsets(cu, BT).to(device)
    cu = cu_seqlens.to(torch.int32)
    return cu, chunk_indices(cu, BT), chunk_offsets(cu, BT)


class _SelectiveScanChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, output_final_state, cu_seqlens):
        Bsz, T, Dm = u.shape
        G, N = B.shape[2], B.shape[3]
        cu, chunk_tab, chunk_offs = chunk_tables(cu_seqlens, Bsz, T, u.device)
        Nseq, NC = cu.numel() - 1, chunk_tab.shape[0]
        BD, BN = _blocks(Dm, G, N)
        BDp = max(1, min(64, 4096 // BN))  # channel block of the chunk-walking passes
        grid = (NC, G * triton.cdiv(Dm // G, BD))
        dims = dict(Dm=Dm, G=G, N=N, BT=BT, BD=BD, BN=BN)
        u, B, C, delta, A = u.contiguous(), B.contiguous(), C.contiguous(), delta.contiguous(), A.contiguous()
        s_end = u.new_empty(NC, Dm, N, dtype=torch.float32)
        dsum = u.new_empty(NC, Dm, dtype=torch.float32)
        _fwd_local[grid](delta, u, B, A, s_end, dsum, cu, chunk_tab, **dims)
        h = u.new_empty(NC, Dm, N, dtype=torch.float32)  # state entering each chunk
        ht = u.new_empty(Nseq, Dm, N, dtype=torch.float32) if output_final_state else None
        _fwd_pass[(Nseq, triton.cdiv(Dm, BDp))](A, s_end, dsum, h, h0, ht, cu, chunk_offs, Dm=Dm, N=N, BT=BT,
                                                BD=BDp, BN=BN, USE_H0=h0 is not None,
                                                STORE_FINAL=output_final_state)
        y = torch.empty_like(u)
        Dc = None if D is None else D.contiguous()
        _fwd_out[grid](delta, u, B, C, A, Dc, h, y, cu, chunk_tab, **dims, HAS_D=D is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, h0, h, dsum, cu, chunk_tab, chunk_offs)
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        u, delta, A, B, C, D, h0, h, dsum, cu, chunk_tab, chunk_offs = ctx.saved_tensors
        Bsz, T, Dm = u.shape
        G, N = B.shape[2], B.shape[3]
        Nseq, NC = cu.numel() - 1, chunk_tab.shape[0]
        BD, BN = _blocks(Dm, G, N)
        BDp = max(1, min(64, 4096 // BN))
        NDB = triton.cdiv(Dm // G, BD)
        grid = (NC, G * NDB)
        dims = dict(Dm=Dm, G=G, N=N, BT=BT, BD=BD, BN=BN)
        dy = dy.contiguous()
        dh_local = u.new_empty(NC, Dm, N, dtype=torch.float32)
        _bwd_local[grid](delta, u, B, C, A, dy, dh_local, cu, chunk_tab, **dims)
        dh = u.new_empty(NC, Dm, N, dtype=torch.float32)
        dh0 = u.new_empty(Nseq, Dm, N, dtype=torch.float32) if h0 is not None else None
        _bwd_pass[(Nseq, triton.cdiv(Dm, BDp))](A, dh_local, dsum, dh, None if dht is None else dht.contiguous(),
                                                dh0, cu, chunk_offs, Dm=Dm, N=N, BT=BT, BD=BDp, BN=BN,
                                                USE_DHT=dht is not None, STORE_DH0=h0 is not None)
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dA_part = u.new_empty(NC, Dm, N, dtype=torch.float32)
        dB_part = u.new_empty(Bsz * T, NDB, G, N, dtype=torch.float32)
        dC_part = u.new_empty(Bsz * T, NDB, G, N, dtype=torch.float32)
        Dc = None if D is None else D.contiguous()
        _bwd_grads[grid](delta, u, B, C, A, Dc, dy, h, dh, dsum, du, ddelta, dA_part, dB_part, dC_part, cu,
                         chunk_tab, **dims, HAS_D=D is not None)
        dB = dB_part.sum(1).view(Bsz, T, G, N).to(B.dtype)
        dC = dC_part.sum(1).view(Bsz, T, G, N).to(C.dtype)
        dD = None
        if D is not None and ctx.needs_input_grad[5]:
            dD = (dy.float() * u.float()).sum((0, 1)).to(D.dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return du, ddelta, dA_part.sum(0), dB, dC, dD, dh0, None, None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, output_final_state=False, cu_seqlens=None):
    """Inputs already checked by the public function. Returns (y in u's dtype, final state fp32 or None)."""
    dl = discretize_delta(delta, delta_bias, delta_softplus)  # [B, T, D] fp32, differentiable
    Af = A.float()
    h0 = None if initial_state is None else initial_state.contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    if not needs_grad and u.shape[1] <= 64:
        # short inputs without autograd (decoding): one program walks the tokens, nothing but y and the state
        from .triton_recurrent import selective_scan_recurrent

        y, ht = selective_scan_recurrent(u, dl, Af, B, C, D, h0, output_final_state, cu_seqlens)
    else:
        y, ht = _SelectiveScanChunk.apply(u, dl, Af, B, C, D, h0, output_final_state, cu_seqlens)
    if z is not None:  # the gate, differentiated by torch
        y = (y.float() * torch.nn.functional.silu(z.float())).to(u.dtype)
    return y, ht
