"""RMSNorm, written out in fp32: the ground truth for every other backend.

    y = x / sqrt(mean(x^2) + eps) * weight              (no gate)
    y = x / sqrt(mean(x^2) + eps) * weight * silu(gate) (gated, as in DeltaNet's / Mamba-2's output norm)
"""

import torch
import torch.nn.functional as F


def rms_norm_reference(x, weight, gate=None, eps=1e-6):
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = xf * rstd
    if weight is not None:
        y = y * weight.float()
    if gate is not None:
        y = y * F.silu(gate.float())
    return y.to(x.dtype)
