"""Recurrent (token-by-token) selective scan in Triton: for decoding and short inputs without autograd.

One program per (sequence, channel block) keeps its ``[BD, N]`` slice of the state in registers (fp32) and walks
the tokens: ``x ← exp(Δ A) ⊙ x + Δ u B``, ``y = C · x + D u``. Only the outputs and the final state are
written. ``selective_scan`` picks it for inputs of at most 64 tokens when nothing needs a gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._chunk import uniform_cu_seqlens


@triton.autotune(configs=autotune_configs(grid={}, num_warps=[1, 4], num_stages=[1]), key=["Dm", "G", "N", "BD", "BN"])
@triton.jit
def _fwd_recurrent(u, delta, A, B, C, D, y, h0, ht, cu,
                   Dm: tl.constexpr, G: tl.constexpr, N: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                   HAS_D: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_n, i_d = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    m_d, m_n = o_d < Dm, o_n < N
    m_dn = m_d[:, None] & m_n[None, :]
    p_dn = o_d[:, None] * N + o_n[None, :]
    o_g = o_d // (Dm // G)  # the group of each channel
    b_A = tl.load(A + p_dn, mask=m_dn, other=0.0)
    b_h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * Dm * N + p_dn, mask=m_dn, other=0.0).to(tl.float32)
    if HAS_D:
        b_D = tl.load(D + o_d, mask=m_d, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        b_dt = tl.load(delta + t * Dm + o_d, mask=m_d, other=0.0)
        b_u = tl.load(u + t * Dm + o_d, mask=m_d, other=0.0).to(tl.float32)
        p_bc = t * G * N + o_g[:, None] * N + o_n[None, :]
        b_B = tl.load(B + p_bc, mask=m_dn, other=0.0).to(tl.float32)
        b_C = tl.load(C + p_bc, mask=m_dn, other=0.0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B
        b_y = tl.sum(b_h * b_C, axis=1)
        if HAS_D:
            b_y += b_D * b_u
        tl.store(y + t * Dm + o_d, b_y.to(y.dtype.element_ty), mask=m_d)
    if STORE_FINAL:
        tl.store(ht + i_n * Dm * N + p_dn, b_h, mask=m_dn)


def selective_scan_recurrent(u, delta, A, B, C, D, h0, output_final_state, cu_seqlens):
    """``delta``: fp32 ``[B, T, D]`` (discretized); ``A``: fp32 ``[D, N]``; ``h0``: ``[N_seq, D, N]`` or None.
    Returns ``(y without the gate, final state or None)``."""
    Bsz, T, Dm = u.shape
    G, N = B.shape[2], B.shape[3]
    cu = uniform_cu_seqlens(Bsz, T, device=u.device) if cu_seqlens is None else cu_seqlens.to(torch.int32)
    Nseq = cu.numel() - 1
    BN = next_power_of_2(N)
    BD = max(1, min(next_power_of_2(Dm), 2048 // BN))
    u = u.contiguous()  # (before empty_like, which would copy u's strides)
    y = torch.empty_like(u)
    ht = u.new_empty(Nseq, Dm, N, dtype=torch.float32) if output_final_state else None
    _fwd_recurrent[(Nseq, triton.cdiv(Dm, BD))](
        u, delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        None if D is None else D.contiguous(), y, h0, ht, cu, Dm=Dm, G=G, N=N, BD=BD, BN=BN,
        HAS_D=D is not None, USE_H0=h0 is not None, STORE_FINAL=output_final_state)
    return y, ht
