"""``spark_attention``: causal attention where each query attends only to the keys its predictor scores put
in a statistical top-k (Spark Transformer, arXiv 2506.06644): at most about ``top_k`` keys per query, chosen
from the first ``predictor_dims`` dims of q and k without sorting; the remaining dims weight the chosen keys.
"""

from __future__ import annotations

import math

import torch

from .._backend import check_cu_seqlens, check_same_device, check_same_dtype, check_tensor, resolve_backend
from .reference import spark_attention_reference, z_table
from .torch_chunk import selection_counts, spark_attention_decode, spark_attention_torch

OP = "spark_attention"
MAX_TRITON_HEAD_DIM = 256


def spark_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    predictor_dims: int,
    top_k: int = 256,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Spark-Attention, causal. With ``r = predictor_dims``, for query i and its visible keys V_i (n_i of them):

        s1_ij = scale·q_i[:r]·k_j[:r],   s2_ij = scale·q_i[r:]·k_j[r:]
        S_i   = {j ∈ V_i : s1_ij ≥ min(mean + std·Φ⁻¹(1 - top_k/n_i), max)}   (all of V_i when n_i ≤ top_k)
        o_i   = Σ_{j∈S_i} softmax_{S_i}(s1_i)_j · softplus(s2_ij) · v_j

    mean / std (population) / max are over the visible s1 of the row; the best-scoring key always survives.
    Gradients flow through s1 and s2 on the selected keys, not through the threshold (a step function).

    Args:
        q: ``[B, Tq, H, D]``; k: ``[B, Tk, Hkv, D]``; v: ``[B, Tk, Hkv, Dv]`` with Tk ≥ Tq ≥ 1 and Hkv dividing
            H (grouped-query attention). Query i sits at key position ``Tk - Tq + i`` (a KV-cache prefix).
            fp32, bf16 or fp16 (one dtype).
        predictor_dims: r, ``0 < r < D``: the leading head dims that score (the rest weight).
        top_k: about how many keys a query attends to once it sees more than that many (≥ 1).
        scale: multiplies both partial scores; defaults to ``D ** -0.5`` (the dense model's score scale).
        cu_seqlens: optional ``[N + 1]`` offsets of packed sequences (B = 1, Tq = Tk).
        key_mask: optional ``[B, Tk]`` bool/int (0: a padding key nobody sees).
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``o``: ``[B, Tq, H, Dv]`` in q's dtype (zeros for a query with no visible key).
    """
    check_tensor(OP, "q", q, ndim=4, layout="[B, Tq, H, D]")
    B, Tq, H, D = q.shape
    check_tensor(OP, "k", k, shape=(B, None, None, D), layout="[B, Tk, Hkv, D]")
    Tk, Hkv = k.shape[1], k.shape[2]
    check_tensor(OP, "v", v, shape=(B, Tk, Hkv, None), layout="[B, Tk, Hkv, Dv]")
    check_same_dtype(OP, q=q, k=k, v=v)
    if Tq < 1 or Tk < Tq:
        raise ValueError(f"{OP}: need Tk >= Tq >= 1 (queries are the last Tq positions of the keys), got q "
                         f"{list(q.shape)} and k {list(k.shape)}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{OP}: k's head count ({Hkv}) must divide q's ({H}) for grouped-query attention")
    if isinstance(predictor_dims, bool) or not isinstance(predictor_dims, int) or not 0 < predictor_dims < D:
        raise ValueError(f"{OP}: predictor_dims must be an int with 0 < predictor_dims < D = {D}, "
                         f"got {predictor_dims!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{OP}: top_k must be a positive int, got {top_k!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"{OP}: scale must be None or a finite float, got {scale!r}")
    check_cu_seqlens(OP, cu_seqlens, B, Tk)
    if cu_seqlens is not None and Tq != Tk:
        raise ValueError(f"{OP}: cu_seqlens needs Tq == Tk (no cache prefix), got Tq={Tq}, Tk={Tk}")
    if key_mask is not None:
        check_tensor(OP, "key_mask", key_mask, shape=(B, Tk), layout="[B, Tk]",
                     dtypes=(torch.bool, torch.int32, torch.int64, torch.uint8, torch.int8))
    check_same_device(OP, q=q, k=k, v=v, cu_seqlens=cu_seqlens, key_mask=key_mask)
    backend = resolve_backend(backend, q.device, OP)
    kwargs = dict(top_k=top_k, scale=None if scale is None else float(scale), cu_seqlens=cu_seqlens,
                  key_mask=key_mask)
    if backend == "reference":
        return spark_attention_reference(q, k, v, predictor_dims, **kwargs)
    if backend == "torch":
        return spark_attention_torch(q, k, v, predictor_dims, **kwargs)
    if D > MAX_TRITON_HEAD_DIM or v.shape[-1] > MAX_TRITON_HEAD_DIM:
        raise ValueError(f"{OP}: backend='triton' supports head dims up to {MAX_TRITON_HEAD_DIM}, got D={D} (q) "
                         f"and Dv={v.shape[-1]} (v); use backend='torch'")
    from .triton_flash import spark_attention_triton

    return spark_attention_triton(q, k, v, predictor_dims, **kwargs)


__all__ = ["spark_attention", "selection_counts", "spark_attention_decode", "spark_attention_reference", "spark_attention_torch",
           "z_table"]
