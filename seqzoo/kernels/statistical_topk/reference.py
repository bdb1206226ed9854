"""Statistical top-k, written out in fp32 as in the paper: the ground truth for every other backend.

For a row x ∈ R^d and a target count k (kept fraction f = k/d):

    μ = mean(x),   σ = sqrt(mean((x - μ)²))            (population std, as transformers' Gemma-3n MLP)
    θ = μ + σ · Φ⁻¹(1 - f)                              (Φ⁻¹: the standard-normal quantile)
    soft:  y = relu(x - θ)                              survivors shifted down by θ, the rest exactly 0
    hard:  y = x where x ≥ θ, else -inf                 for attention scores, before a softmax

If x were Gaussian, a fraction f of its entries would lie above θ. Gradients flow through μ and σ in the
soft mode. σ is computed as sqrt(max(var, TINY)) so that a constant row has a finite gradient (the clamp
stops the gradient through σ there); TINY = 1e-30 changes no output that fp32 can tell apart.
"""

from __future__ import annotations

import torch

TINY_VAR = 1e-30


def statistical_topk_reference(x: torch.Tensor, z: float, mode: str = "soft") -> torch.Tensor:
    """``x [..., d]`` (the last dim is the row), ``z = Φ⁻¹(1 - k/d)``; returns ``y`` like ``x``."""
    xf = x.float()
    mu = xf.mean(dim=-1, keepdim=True)
    var = ((xf - mu) ** 2).mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(torch.clamp(var, min=TINY_VAR))
    theta = mu + sigma * z
    if mode == "soft":
        y = torch.relu(xf - theta)
    else:
        # the comparison is a step function of x: no gradient flows through θ in the hard mode
        y = torch.where(xf >= theta, xf, torch.full_like(xf, float("-inf")))
    return y.to(x.dtype)
