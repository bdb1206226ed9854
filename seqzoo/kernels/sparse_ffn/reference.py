"""The sparse FFN's ground truth: the dense computation with zeros, in fp32.

    u = W_value x            (every neuron's value branch)
    h = a ⊙ u                (a: the predictor branch after top-k: zero except on the survivors)
    o = W_downᵀ h            (W_down stored [F, Dm]: row i is neuron i's output direction)

The gradient with respect to ``a`` is taken on its nonzero entries only: the zeros are structural (they come
from relu(x - θ) or a top-k), so the sparse paths need never look at the other neurons.
"""

from __future__ import annotations

import torch


def sparse_ffn_reference(a, x, w_value, w_down):
    af = a.float()
    af = torch.where(af != 0, af, torch.zeros_like(af))  # zeros carry no gradient
    u = x.float() @ w_value.float().t()  # [N, F]
    return ((af * u) @ w_down.float()).to(x.dtype)  # [N, Dm]
