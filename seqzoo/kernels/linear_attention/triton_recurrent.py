"""Recurrent (token-by-token) linear attention in Triton: for decoding and short inputs without autograd.

One program per (sequence, head, V tile) keeps its ``[K, BV]`` slice of the state in registers (fp32) and walks
the tokens: ``S ← λ S + k vᵀ``, ``o = scale · Sᵀ q``. Nothing but the outputs and the final state is written,
so a decoding step costs one read of the state and one write. Forward only: training goes through
``triton_chunk`` (``linear_attention`` picks this kernel only when no input needs a gradient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import autotune_configs, next_power_of_2


@triton.autotune(configs=autotune_configs(grid={}, num_warps=[1, 4], num_stages=[1]),
                 key=["H", "K", "V", "BK", "BV", "HAS_DECAY"])
@triton.jit
def _fwd_recurrent(q, k, v, g, o, h0, ht, scale, cu,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   HAS_DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
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


def linear_attention_recurrent(q, k, v, g, scale, h0, output_final_state, cu_seqlens):
    """``g``: fp32 ``[H]`` log-decay or None; ``h0``: ``[N, H, K, V]`` or None. Returns (o, final or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if cu_seqlens is None:
        cu = torch.arange(0, B + 1, dtype=torch.int32, device=q.device) * T
    else:
        cu = cu_seqlens.to(torch.int32)
    N = cu.numel() - 1
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    BK = max(16, next_power_of_2(K))
    BV = max(16, min(next_power_of_2(V), 8192 // BK))  # keep the register tile at ≤ 8192 fp32
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    _fwd_recurrent[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, o, h0, ht, scale, cu, H=H, K=K, V=V, BK=BK, BV=BV,
        HAS_DECAY=g is not None, USE_H0=h0 is not None, STORE_FINAL=output_final_state)
    return o, ht
