"""Spark-Attention written out densely in fp32, one [Tq, Tk] score matrix per (batch, head): the ground truth.

For query i (absolute position Tk - Tq + i, so a KV cache of earlier tokens lines up) and its visible keys
V_i (causal: j ≤ position; same packed sequence; key_mask true), n_i = |V_i|, with the first r dims of the
head dim scoring ("predictor") and the rest weighting:

    s1_ij = scale · q_i[:r] · k_j[:r]          s2_ij = scale · q_i[r:] · k_j[r:]
    θ_i   = mean_{V_i}(s1_i) + std_{V_i}(s1_i) · Φ⁻¹(1 - top_k / n_i)        (population std)
    t_i   = min(θ_i, max_{V_i} s1_i)   if n_i > top_k, else -inf          (the best key always survives)
    S_i   = {j ∈ V_i : s1_ij ≥ t_i}                                          (statistical top-k, hard)
    o_i   = Σ_{j∈S_i} softmax_{S_i}(s1_i)_j · softplus(s2_ij) · v_j          (o_i = 0 when V_i is empty)

The selection is a step function of the scores: gradients flow through s1 (softmax) and s2 (softplus) on the
selected keys, never through θ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..statistical_topk.reference import TINY_VAR


def z_table(top_k: int, n_max: int, device) -> torch.Tensor:
    """``z[n] = Φ⁻¹(1 - top_k / n)`` for n > top_k (0 elsewhere, unused), fp32 ``[n_max + 1]``."""
    n = torch.arange(n_max + 1, dtype=torch.float64)
    frac = torch.where(n > top_k, top_k / n.clamp_min(1), torch.full_like(n, 0.5))
    return torch.special.ndtri(1.0 - frac).float().to(device)


def visibility(B, Tq, Tk, device, cu_seqlens=None, key_mask=None):
    """Boolean [B, Tq, Tk]: query i (at position Tk - Tq + i) may see key j."""
    q_pos = (Tk - Tq) + torch.arange(Tq, device=device)
    k_pos = torch.arange(Tk, device=device)
    vis = (k_pos[None, :] <= q_pos[:, None])[None].expand(B, Tq, Tk)
    if cu_seqlens is not None:
        seq = torch.bucketize(k_pos, cu_seqlens.to(device)[1:], right=True)
        vis = vis & (seq[Tk - Tq:, None] == seq[None, :])[None]
    if key_mask is not None:
        vis = vis & key_mask.bool()[:, None, :]
    return vis


def spark_attention_reference(q, k, v, predictor_dims, top_k=256, scale=None, cu_seqlens=None, key_mask=None):
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    r = predictor_dims
    scale = D**-0.5 if scale is None else scale
    rep = H // Hkv
    qf = q.float()
    kf = k.float().repeat_interleave(rep, dim=2)  # [B, Tk, H, D]: query head h reads kv head h // rep
    vf = v.float().repeat_interleave(rep, dim=2)
    s1 = scale * torch.einsum("bihd,bjhd->bhij", qf[..., :r], kf[..., :r])  # [B, H, Tq, Tk]
    s2 = scale * torch.einsum("bihd,bjhd->bhij", qf[..., r:], kf[..., r:])
    vis = visibility(B, Tq, Tk, q.device, cu_seqlens, key_mask)[:, None]  # [B, 1, Tq, Tk]
    with torch.no_grad():  # the threshold: statistics of the visible predictor scores of each query
        n = vis.sum(-1, keepdim=True)  # [B, 1, Tq, 1]
        mean = (s1 * vis).sum(-1, keepdim=True) / n.clamp_min(1)
        var = (((s1 - mean) * vis) ** 2).sum(-1, keepdim=True) / n.clamp_min(1)
        z = z_table(top_k, Tk, q.device)[n]
        theta = mean + torch.sqrt(var.clamp_min(TINY_VAR)) * z
        row_max = s1.masked_fill(~vis, float("-inf")).amax(-1, keepdim=True)
        thr = torch.where(n > top_k, torch.minimum(theta, row_max), torch.full_like(theta, float("-inf")))
        selected = vis & (s1 >= thr)
    p = torch.softmax(s1.masked_fill(~selected, float("-inf")), dim=-1)
    p = torch.where(selected, p, torch.zeros_like(p))  # rows with no visible key: all zero, not NaN
    w = p * F.softplus(s2)
    o = torch.einsum("bhij,bjhd->bihd", w, vf)  # [B, Tq, H, Dv]
    return o.to(q.dtype)
