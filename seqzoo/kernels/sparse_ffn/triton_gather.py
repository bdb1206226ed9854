"""The sparse FFN in Triton: two kernels that read only the survivors' rows of W_value and W_down.

``_value``  grid (N, ⌈K/BK⌉): for BK survivors of row n, ``u_k = W_value[idx_k] · x_n`` (looping over Dv in
            BD-wide steps) and ``h_k = a_k u_k``; stores u and h in fp32.
``_down``   grid (N, ⌈Dm/BD⌉): ``o_n[cols] = Σ_k h_k W_down[idx_k, cols]`` (looping over K in BK steps).
Padding entries (k ≥ count_n) are masked, so no other row of the weights is read.

The backward gathers the same rows in PyTorch (dh = W_down[idx] g, da = dh ⊙ u, dx = W_value[idx]ᵀ (dh ⊙ a),
and index_add into the weight gradients): training runs the dense path, this one serves decoding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreter_active, next_power_of_2
from .torch_gather import survivors


@triton.jit
def _value(X, WV, IDX, ASEL, CNT, U, H, K, DV, BK: tl.constexpr, BD: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    kk = tl.program_id(1) * BK + tl.arange(0, BK)
    cnt = tl.load(CNT + n)
    m_k = kk < cnt
    rows = tl.load(IDX + n * K + kk, mask=m_k, other=0).to(tl.int64)
    cols = tl.arange(0, BD)
    u = tl.zeros([BK], dtype=tl.float32)
    for c0 in range(0, DV, BD):
        m_c = (c0 + cols) < DV
        x = tl.load(X + n * DV + c0 + cols, mask=m_c, other=0.0).to(tl.float32)
        w = tl.load(WV + rows[:, None] * DV + c0 + cols[None, :], mask=m_k[:, None] & m_c[None, :],
                    other=0.0).to(tl.float32)
        u += tl.sum(w * x[None, :], axis=1)
    a = tl.load(ASEL + n * K + kk, mask=m_k, other=0.0).to(tl.float32)
    m_out = kk < K
    tl.store(U + n * K + kk, u, mask=m_out)
    tl.store(H + n * K + kk, a * u, mask=m_out)


@triton.jit
def _down(H, WD, IDX, CNT, O, K, DM, BK: tl.constexpr, BD: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    m_c = cols < DM
    cnt = tl.load(CNT + n)
    acc = tl.zeros([BD], dtype=tl.float32)
    for k0 in range(0, cnt, BK):
        kk = k0 + tl.arange(0, BK)
        m_k = kk < cnt
        rows = tl.load(IDX + n * K + kk, mask=m_k, other=0).to(tl.int64)
        h = tl.load(H + n * K + kk, mask=m_k, other=0.0)
        w = tl.load(WD + rows[:, None] * DM + cols[None, :], mask=m_k[:, None] & m_c[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(h[:, None] * w, axis=0)
    tl.store(O + n * DM + cols, acc.to(O.dtype.element_ty), mask=m_c)


class _SparseFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, w_value, w_down):
        N, DV = x.shape
        DM = w_down.shape[1]
        idx, a_sel, count = survivors(a)
        K = idx.shape[1]
        x, w_value, w_down = x.contiguous(), w_value.contiguous(), w_down.contiguous()
        idx32 = idx.to(torch.int32).contiguous()
        cnt32 = count.to(torch.int32).contiguous()
        a_sel = a_sel.contiguous()
        u = torch.empty(N, K, device=x.device, dtype=torch.float32)
        h = torch.empty(N, K, device=x.device, dtype=torch.float32)
        o = torch.empty(N, DM, device=x.device, dtype=x.dtype)
        BK = 16 if interpreter_active() else 32
        BDv = min(next_power_of_2(DV), 128)
        BDm = min(next_power_of_2(DM), 128)
        if N > 0 and K > 0:
            _value[(N, triton.cdiv(K, BK))](x, w_value, idx32, a_sel, cnt32, u, h, K, DV, BK=BK, BD=BDv)
        if N > 0:
            _down[(N, triton.cdiv(DM, BDm))](h, w_down, idx32, cnt32, o, K, DM, BK=BK, BD=BDm)
        ctx.save_for_backward(x, w_value, w_down, idx, a_sel, u, h, count)
        ctx.a_shape = a.shape
        return o

    @staticmethod
    def backward(ctx, g):
        x, w_value, w_down, idx, a_sel, u, h, count = ctx.saved_tensors
        N, K = idx.shape
        valid = (torch.arange(K, device=idx.device)[None, :] < count[:, None]).float()  # [N, K]
        gf = g.float()
        wd = w_down[idx].float()  # [N, K, Dm]
        dh = (wd @ gf[:, :, None]).squeeze(-1) * valid  # [N, K]
        da_sel = dh * u
        du = dh * a_sel.float()
        wv = w_value[idx].float()  # [N, K, Dv]
        dx = (du[:, None, :] @ wv).squeeze(1)  # [N, Dv]
        da = torch.zeros(ctx.a_shape, device=g.device, dtype=torch.float32).scatter_add_(1, idx, da_sel)
        dwv = torch.zeros(w_value.shape, device=g.device, dtype=torch.float32)
        dwv.index_add_(0, idx.reshape(-1), (du[:, :, None] * x.float()[:, None, :]).reshape(N * K, -1))
        dwd = torch.zeros(w_down.shape, device=g.device, dtype=torch.float32)
        dwd.index_add_(0, idx.reshape(-1), (h[:, :, None] * valid[:, :, None] * gf[:, None, :]).reshape(N * K, -1))
        return da.to(a_sel.dtype), dx.to(x.dtype), dwv.to(w_value.dtype), dwd.to(w_down.dtype)


def sparse_ffn_triton(a, x, w_value, w_down):
    if not (x.is_cuda or interpreter_active()):
        raise ValueError("sparse_ffn: the triton backend needs CUDA tensors or TRITON_INTERPRET=1")
    return _SparseFFN.apply(a, x, w_value, w_down)
