"""The chunked delta rule in plain PyTorch (the CPU path; differentiable by autograd).

Split time into chunks of C tokens. Inside a chunk with rows Q (scaled), K, V, beta and entering state S,
the per-token corrections ``V_new`` solve a unit lower-triangular system (README.md has the derivation):

    A     = strict_tril(diag(beta) K K^T)            [C, C]
    W     = (I + A)^{-1} diag(beta) K                [C, K]     (WY / UT transform)
    U     = (I + A)^{-1} diag(beta) V                [C, V]
    V_new = U - W S                                  [C, V]
    O     = Q S + tril(Q K^T) V_new                  [C, V]    (tril keeps the diagonal)
    S    <- S + K^T V_new                            [K, V]

W, U and tril(Q K^T) are computed for all chunks at once (batched matmuls and one batched triangular
solve); only the three small products per chunk that carry S are sequential (T / C steps).
"""

from __future__ import annotations

import torch

from .._chunk import pack_varlen, pad_time, unpack_varlen

CHUNK = 64
BLOCK = 16  # the diagonal blocks of (I + A) inverted by doubling


def unit_lower_inverse(a: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(I + a)^{-1}`` for a batch of strictly lower-triangular ``a`` ``[..., C, C]``.

    Matmul-shaped (faster on CPU than a batched triangular solve of many small systems): each
    ``block x block`` diagonal block ``I + a_ii`` is inverted by doubling, using that ``n = -a_ii`` is
    nilpotent: ``(I - n)^{-1} = (I + n)(I + n^2)(I + n^4)...``; then block forward substitution,
    ``X_i,<i = X_ii (-a_i,<i) X_<i,<i``, fills the rows of blocks below the diagonal.
    """
    C = a.shape[-1]
    if C % block != 0:
        block = C
    nb = C // block
    n = -a
    eye = torch.eye(block, dtype=a.dtype, device=a.device)
    # diagonal blocks, all at once: [..., nb, b, b]
    diag = torch.stack([n[..., i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(nb)], -3)
    inv_diag, power = eye + diag, diag
    for _ in range(max(block - 1, 1).bit_length() - 1):  # n^(2^j) for 2^j < block
        power = power @ power
        inv_diag = inv_diag + inv_diag @ power
    x = inv_diag[..., 0, :, :]  # the inverse of the leading i blocks, grown one block-row at a time
    for i in range(1, nb):
        rows = slice(i * block, (i + 1) * block)
        left = inv_diag[..., i, :, :] @ (n[..., rows, : i * block] @ x)  # [..., b, i*b]
        top = torch.cat([x, x.new_zeros(x.shape[:-1] + (block,))], dim=-1)  # [..., i*b, (i+1)*b]
        bottom = torch.cat([left, inv_diag[..., i, :, :]], dim=-1)  # [..., b, (i+1)*b]
        x = torch.cat([top, bottom], dim=-2)
    return x


def _chunked(q, k, v, beta, state, chunk: int, scale: float):
    """Dense fp32 inputs, T a multiple of ``chunk``: q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H];
    state [B, H, K, V]. Returns o [B, T, H, V] and the final state [B, H, K, V]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n = T // chunk
    # [B, T, H, D] -> [B, H, n, C, D], contiguous so that every per-chunk slice is a dense matrix
    q = (q.transpose(1, 2) * scale).reshape(B, H, n, chunk, K)  # scaled queries
    k, v = (x.transpose(1, 2).reshape(B, H, n, chunk, x.shape[-1]) for x in (k, v))
    beta = beta.transpose(1, 2).reshape(B, H, n, chunk, 1)  # [B, H, n, C, 1]

    strict = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(0)
    kb = k * beta  # diag(beta) K                                         [B, H, n, C, K]
    A = (kb @ k.transpose(-1, -2)).masked_fill(~strict, 0.0)  # strict_tril(diag(beta) K K^T)  [.., C, C]
    t_inv = unit_lower_inverse(A)  # (I + A)^{-1}                          [B, H, n, C, C]
    w, u = t_inv @ kb, t_inv @ (v * beta)  # W [.., C, K], U [.., C, V]
    kt = k.transpose(-1, -2).contiguous()  # K^T                          [B, H, n, K, C]

    BH = B * H  # flatten (batch, head) so each step is one baddbmm over all heads
    w_, u_, kt_ = w.reshape(BH, n, chunk, K), u.reshape(BH, n, chunk, V), kt.reshape(BH, n, K, chunk)
    s = state.reshape(BH, K, V)
    states, news = [], []
    for i in range(n):  # the only sequential part: carry S across chunks (2 small matmul-shaped ops)
        states.append(s)  # S entering chunk i                            [BH, K, V]
        v_new = torch.baddbmm(u_[:, i], w_[:, i], s, alpha=-1.0)  # U - W S  [BH, C, V]
        news.append(v_new)
        s = torch.baddbmm(s, kt_[:, i], v_new)  # S + K^T V_new              [BH, K, V]
    state = s.reshape(B, H, K, V)
    s_in = torch.stack(states, dim=1).reshape(B, H, n, K, V)  # S entering each chunk
    v_new = torch.stack(news, dim=1).reshape(B, H, n, chunk, V)
    attn = (q @ kt).masked_fill(~causal, 0.0)  # tril(Q K^T)              [B, H, n, C, C]
    o = q @ s_in + attn @ v_new  # Q S + tril(Q K^T) V_new                  [B, H, n, C, V]
    o = o.reshape(B, H, T, V).transpose(1, 2)  # [B, T, H, V]
    return o, state


def delta_rule_torch(q, k, v, beta, scale, initial_state=None, cu_seqlens=None, chunk: int = CHUNK):
    """Inputs already checked; returns ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] fp32)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    qf, kf, vf, bf = q.float(), k.float(), v.float(), beta.float()
    if cu_seqlens is not None:
        # packed [1, T, ...] -> padded [N, L, ...]; zero keys and zero beta leave the state unchanged
        qf, kf, vf, bf = (unpack_varlen(x, cu_seqlens, multiple=chunk) for x in (qf, kf, vf, bf))
    else:
        qf, kf, vf, bf = (pad_time(x, chunk) for x in (qf, kf, vf, bf))
    N = qf.shape[0]
    if initial_state is None:
        state = qf.new_zeros(N, H, K, V)
    else:
        state = initial_state.float()
    o, final = _chunked(qf, kf, vf, bf, state, chunk, scale)
    if cu_seqlens is not None:
        o = pack_varlen(o, cu_seqlens)
    else:
        o = o[:, :T]
    return o.to(out_dtype), final
