"""Fused RMSNorm (optionally gated by silu(gate)) in Triton: forward and backward kernels in one autograd.Function.

Forward, per row x of length D:   r = 1 / sqrt(mean(x^2) + eps),  n = x * r * w,  y = n * silu(g)
Backward, with s = silu(g), dn = dy * s (dy without a gate):
    dg = dy * n * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
    dw = sum over rows of dn * x * r           (each program sums its rows; torch adds the partials)
    dx = r * (dn * w - x * r * mean(dn * w * x * r))
Rows are independent, so the forward runs one program per row; the backward runs a fixed number of programs
that stride over rows, so the weight-gradient partials stay few. The row count is not a compile-time constant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreter_active, next_power_of_2


@triton.jit
def _rms_fwd(X, W, G, Y, RSTD, D, eps, HAS_W: tl.constexpr, HAS_G: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_G:
        g = tl.load(G + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        y = y * g * tl.sigmoid(g)
    tl.store(Y + row * D + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_bwd(X, W, G, DY, RSTD, DX, DG, DW_PART, M, D, HAS_W: tl.constexpr, HAS_G: tl.constexpr,
             BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_D], 1.0, tl.float32)
    dw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(0, tl.cdiv(M - pid, nprog)):
        row = pid + i * nprog  # int64: row * D may pass 2^31
        base = row * D
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        if HAS_G:
            g = tl.load(G + base + cols, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(g)
            n = xhat * w
            dg = dy * n * sig * (1.0 + g * (1.0 - sig))
            tl.store(DG + base + cols, dg.to(DG.dtype.element_ty), mask=mask)
            dn = dy * g * sig
        else:
            dn = dy
        dw_acc += dn * xhat
        dnw = dn * w
        dx = rstd * (dnw - xhat * (tl.sum(dnw * xhat, axis=0) / D))
        tl.store(DX + base + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_W:
        tl.store(DW_PART + pid * D + cols, dw_acc, mask=mask)


def _num_warps(block_d: int) -> int:
    return min(max(block_d // 256, 1), 16)


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps):
        shape = x.shape
        D = shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        g2 = gate.reshape(-1, D).contiguous() if gate is not None else None
        w = weight.contiguous() if weight is not None else None
        M = x2.shape[0]
        y = torch.empty_like(x2)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        block_d = next_power_of_2(D)
        if M > 0:
            _rms_fwd[(M,)](
                x2, w if w is not None else x2, g2 if g2 is not None else x2, y, rstd, D, eps,
                HAS_W=w is not None, HAS_G=g2 is not None, BLOCK_D=block_d, num_warps=_num_warps(block_d),
            )
        ctx.save_for_backward(x2, w, g2, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w, g2, rstd = ctx.saved_tensors
        D = x2.shape[-1]
        M = x2.shape[0]
        dy2 = dy.reshape(-1, D).contiguous()
        dx = torch.empty_like(x2)
        dg = torch.empty_like(g2) if g2 is not None else None
        if x2.is_cuda:
            sms = torch.cuda.get_device_properties(x2.device).multi_processor_count
            nprog = max(1, min(M, 4 * sms))
        else:  # the interpreter runs programs one after another: few programs, long loops
            nprog = max(1, min(M, 4))
        dw_part = torch.empty(nprog, D, device=x2.device, dtype=torch.float32) if w is not None else None
        block_d = next_power_of_2(D)
        if M > 0:
            _rms_bwd[(nprog,)](
                x2, w if w is not None else x2, g2 if g2 is not None else x2, dy2, rstd, dx,
                dg if dg is not None else dx, dw_part if dw_part is not None else dx, M, D,
                HAS_W=w is not None, HAS_G=g2 is not None, BLOCK_D=block_d, num_warps=_num_warps(block_d),
            )
        dw = None
        if w is not None:
            dw = dw_part.sum(0).to(w.dtype) if M > 0 else torch.zeros_like(w)
        return (
            dx.reshape(ctx.shape),
            dw,
            dg.reshape(ctx.shape) if dg is not None else None,
            None,
        )


def rms_norm_triton(x, weight, gate=None, eps=1e-6):
    if not (x.is_cuda or interpreter_active()):
        raise ValueError("rms_norm: the triton backend needs CUDA tensors or TRITON_INTERPRET=1")
    return _RMSNormFn.apply(x, weight, gate, float(eps))
