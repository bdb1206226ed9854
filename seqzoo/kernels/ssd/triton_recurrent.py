"""Recurrent (token-by-token) SSD scan in Triton: for decoding and short inputs without autograd.

One program per (sequence, head, P tile) keeps its ``[BP, N]`` slice of the state in registers (fp32) and walks
the tokens: ``S ← exp(Δ A) S + Δ x Bᵀ``, ``y = S C + D x``. Only the outputs and the final state are written,
so a decoding step reads the state once and writes it once. ``ssd_scan`` picks it for inputs of at most one
chunk (T ≤ 64) when nothing needs a gradient; training goes through ``triton_chunk``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2
from .._chunk import uniform_cu_seqlens


@triton.autotune(configs=autotune_configs(grid={}, num_warps=[1, 4], num_stages=[1]),
                 key=["H", "G", "P", "N", "BP", "BN"])
@triton.jit
def _fwd_recurrent(x, delta, A, B, C, D, y, h0, ht, cu,
                   H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr,
                   BN: tl.constexpr, D_MODE: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)
    o_s = tl.arange(0, BN)
    m_p, m_s = o_p < P, o_s < N
    m_ps = m_p[:, None] & m_s[None, :]
    p_state = i_h * P * N + o_p[:, None] * N + o_s[None, :]
    b_h = tl.zeros([BP, BN], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_n * H * P * N + p_state, mask=m_ps, other=0.0).to(tl.float32)
    b_A = tl.load(A + i_h).to(tl.float32)
    if D_MODE == 1:
        b_D = tl.load(D + i_h).to(tl.float32)
    elif D_MODE == 2:
        b_D = tl.load(D + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        b_dt = tl.load(delta + t * H + i_h).to(tl.float32)
        b_x = tl.load(x + t * H * P + i_h * P + o_p, mask=m_p, other=0.0).to(tl.float32)
        b_B = tl.load(B + t * G * N + i_g * N + o_s, mask=m_s, other=0.0).to(tl.float32)
        b_C = tl.load(C + t * G * N + i_g * N + o_s, mask=m_s, other=0.0).to(tl.float32)
        b_h = b_h * tl.exp(b_dt * b_A) + (b_dt * b_x)[:, None] * b_B[None, :]
        b_y = tl.sum(b_h * b_C[None, :], axis=1)  # [BP]
        if D_MODE != 0:
            b_y += b_D * b_x
        tl.store(y + t * H * P + i_h * P + o_p, b_y.to(y.dtype.element_ty), mask=m_p)
    if STORE_FINAL:
        tl.store(ht + i_n * H * P * N + p_state, b_h, mask=m_ps)


def ssd_scan_recurrent(x, delta, A, B, C, D, h0, output_final_state, cu_seqlens):
    """``delta``: fp32 ``[B, T, H]`` (discretized); ``A``: fp32 ``[H]``; ``h0``: ``[N_seq, H, P, N]`` or None."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    cu = uniform_cu_seqlens(Bsz, T, device=x.device) if cu_seqlens is None else cu_seqlens.to(torch.int32)
    Nseq = cu.numel() - 1
    x, B, C, delta = x.contiguous(), B.contiguous(), C.contiguous(), delta.contiguous()
    BN = max(16, next_power_of_2(N))
    BP = max(16, min(next_power_of_2(P), 8192 // BN))  # keep the register tile at ≤ 8192 fp32
    y = torch.empty_like(x)
    ht = x.new_empty(Nseq, H, P, N, dtype=torch.float32) if output_final_state else None
    _fwd_recurrent[(Nseq * H, triton.cdiv(P, BP))](
        x, delta, A.contiguous(), B, C, None if D is None else D.contiguous(), y, h0, ht, cu,
        H=H, G=G, P=P, N=N, BP=BP, BN=BN, D_MODE=0 if D is None else D.dim(), USE_H0=h0 is not None,
        STORE_FINAL=output_final_state)
    return y, ht
