"""The sparse FFN in plain PyTorch: gather the survivors' rows of W_value and W_down, compute only those.

For one row (batch-1 decoding) the survivors are ``nonzero(a)``: ``index_select`` K rows of W_value, one
matrix-vector product, and ``embedding_bag`` sums the K rows of W_down weighted by h without copying them.
For N rows the survivor lists are padded to the longest (padding points at neuron 0 with weight 0) and the
gathered rows form ``[N, K, D]`` batches. Autograd gives the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def survivors(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(idx [N, K] int64, a_sel [N, K], count [N])``: each row's nonzero columns first (in column order),
    padded with column 0 and weight 0 up to the longest row's count K."""
    mask = a != 0
    count = mask.sum(-1)  # [N]
    K = int(count.max()) if a.shape[0] > 0 else 0
    order = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True)[:, :K]  # [N, K]
    pad = torch.arange(K, device=a.device)[None, :] >= count[:, None]
    idx = order.masked_fill(pad, 0)
    a_sel = a.gather(1, idx).masked_fill(pad, 0)
    return idx, a_sel, count


def sparse_ffn_torch(a, x, w_value, w_down):
    N = a.shape[0]
    if N == 1:
        idx = a[0].nonzero().squeeze(1)  # [K]
        h = a[0, idx].float() * (w_value.index_select(0, idx).float() @ x[0].float())  # [K]
        differentiable = torch.is_grad_enabled() and (w_down.requires_grad or h.requires_grad)
        if idx.numel() == 0 or differentiable or w_down.dtype != torch.float32:
            o = h @ w_down.index_select(0, idx).float()
        else:  # inference in fp32 (a Parameter under no_grad too): sum the K weighted rows, no copy of them
            o = F.embedding_bag(idx[None], w_down, per_sample_weights=h[None], mode="sum")[0]
        return o[None].to(x.dtype)
    idx, a_sel, _ = survivors(a)
    u = (w_value[idx].float() @ x.float()[:, :, None]).squeeze(-1)  # [N, K]
    h = a_sel.float() * u
    return (h[:, None, :] @ w_down[idx].float()).squeeze(1).to(x.dtype)  # [N, Dm]
