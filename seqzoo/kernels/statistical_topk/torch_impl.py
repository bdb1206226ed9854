"""The pure-PyTorch path: the reference's math with fused reductions (``torch.var_mean``) and no extra fp32
copies where the input already is fp32; autograd gives the backward. Statistics are computed in fp32."""

from __future__ import annotations

import torch

from .reference import TINY_VAR


def statistical_topk_torch(x: torch.Tensor, z: float, mode: str = "soft") -> torch.Tensor:
    xf = x.float()
    var, mu = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)
    theta = torch.addcmul(mu, torch.sqrt(var.clamp_min(TINY_VAR)), torch.full_like(mu, z))
    if mode == "soft":
        return torch.relu(xf - theta).to(x.dtype)
    return xf.masked_fill(xf < theta, float("-inf")).to(x.dtype)
