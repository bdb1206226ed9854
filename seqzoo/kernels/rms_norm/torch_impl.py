"""The pure-PyTorch path: the same math as the reference, written for speed on CPU (no extra fp32 copies of
the weight, one fused reduction); autograd gives the backward. Statistics are computed in fp32."""

import torch
import torch.nn.functional as F


def rms_norm_torch(x, weight, gate=None, eps=1e-6):
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    if gate is not None:
        y = y * F.silu(gate.float())
    return y.to(x.dtype)
