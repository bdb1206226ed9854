"""The chunked delta rule in plain PyTorch (the CPU path; differentiable by autograd).

Split time into chunks of C tokens. Inside a chunk with rows Q (scaled), K, V, beta and entering state S,
the per-token corrections ``V_new`` solve a unit lower-triangular system (README.md has the derivation):

    A     = strict_tril(diag(beta) K K^T)            [C, C]
    W     = (I + A)^{-1} diag(beta) K                [C, K]     (WY / UT transform)
    U     = (I + A)^{-1} diag(beta) V                [C, V]
    V_new = U - W S                                  [C, V]
    O     = Q S + tril(Q K^T) V_new                  [C, V]    (tril keeps the diagonal)
    S    <- S + K^T V_new                            [K, V]

W, U and tril(Q K^T) are computed for all chunks at once (batched matmuls and a blocked triangular solve);
only the two small products per chunk that carry S are sequential (T / C steps). Tensors are laid out
chunk-major, ``[n_chunks, B*H, C, D]``, so every batched matmul reads dense matrices.
"""

from __future__ import annotations

import torch

from .._chunk import pack_varlen, pad_time, seq_lens, unpack_varlen

CHUNK = 64
BLOCK = 16  # the diagonal blocks of (I + A) inverted by doubling


def unit_lower_solve(a: torch.Tensor, rhs: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``(I + a)^{-1} rhs`` for a batch of strictly lower-triangular ``a`` ``[..., C, C]``, ``rhs [..., C, R]``.

    Matmul-shaped (on CPU ~3x faster than ``torch.linalg.solve_triangular`` on many small systems): each
    ``block x block`` diagonal block ``I + a_ii`` is inverted by doubling, using that ``n = -a_ii`` is
    nilpotent: ``(I - n)^{-1} = (I + n)(I + n^2)(I + n^4)...``; then block forward substitution,
    ``y_i = (I + a_ii)^{-1} (rhs_i - sum_{m<i} a_im y_m)``.
    """
    C = a.shape[-1]
    if C % block != 0:
        block = C
    nb = C // block
    eye = torch.eye(block, dtype=a.dtype, device=a.device)
    # the diagonal blocks, all at once: [..., nb, b, b]
    n = -torch.stack([a[..., i * block:(i + 1) * block, i * block:(i + 1) * block] for i in range(nb)], -3)
    inv_diag, power = eye + n, n
    for _ in range(max(block - 1, 1).bit_length() - 1):  # n^(2^j) for 2^j < block
        power = power @ power
        inv_diag = inv_diag + inv_diag @ power
    ys = []
    for i in range(nb):
        rows = slice(i * block, (i + 1) * block)
        r = rhs[..., rows, :]
        if i:
            r = r - a[..., rows, : i * block] @ torch.cat(ys, dim=-2)  # rhs_i - a_i,<i y_<i
        ys.append(inv_diag[..., i, :, :] @ r)
    return torch.cat(ys, dim=-2)


def _to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, H, D] -> [n, B*H, C, D] contiguous (chunk-major, so each chunk's batch is one dense block)."""
    B, T, H, D = x.shape
    return x.reshape(B, T // chunk, chunk, H, D).permute(1, 0, 3, 2, 4).reshape(T // chunk, B * H, chunk, D)


def _chunked(q, k, v, beta, state, chunk: int, scale: float):
    """Dense fp32 inputs, T a multiple of ``chunk``: q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H];
    state [B, H, K, V]. Returns o [B, T, H, V] and the final state [B, H, K, V]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n, BH = T // chunk, B * H
    q = _to_chunks(q * scale, chunk)  # scaled queries                     [n, BH, C, K]
    k, v = _to_chunks(k, chunk), _to_chunks(v, chunk)  # [n, BH, C, K], [n, BH, C, V]
    beta = _to_chunks(beta[..., None], chunk)  # [n, BH, C, 1]
    kt = k.transpose(-1, -2).contiguous()  # K^T                           [n, BH, K, C]

    strict = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(0)
    kb = k * beta  # diag(beta) K
    A = (kb @ kt).masked_fill(~strict, 0.0)  # strict_tril(diag(beta) K K^T)         [n, BH, C, C]
    wu = unit_lower_solve(A, torch.cat([kb, v * beta], dim=-1))  # (I + A)^{-1} [diag(b)K | diag(b)V]
    w, u = wu[..., :K].contiguous(), wu[..., K:].contiguous()  # W [n, BH, C, K], U [n, BH, C, V]

    s = state.reshape(BH, K, V)
    states, news = [], []
    for i in range(n):  # the only sequential part: carry S across chunks (2 small matmul-shaped ops)
        states.append(s)  # S entering chunk i                            [BH, K, V]
        v_new = torch.baddbmm(u[i], w[i], s, alpha=-1.0)  # U - W S          [BH, C, V]
        news.append(v_new)
        s = torch.baddbmm(s, kt[i], v_new)  # S + K^T V_new                  [BH, K, V]
    s_in = torch.stack(states).reshape(n * BH, K, V)  # S entering each chunk
    v_new = torch.stack(news).reshape(n * BH, chunk, V)
    attn = (q @ kt).masked_fill(~causal, 0.0).reshape(n * BH, chunk, chunk)  # tril(Q K^T)
    o = torch.baddbmm(attn @ v_new, q.reshape(n * BH, chunk, K), s_in)  # Q S + tril(Q K^T) V_new
    o = o.reshape(n, B, H, chunk, V).permute(1, 0, 3, 2, 4).reshape(B, T, H, V)
    return o, s.reshape(B, H, K, V)


def _longest(cu_host: torch.Tensor) -> int:
    lens = seq_lens(cu_host)
    return int(lens.max()) if lens.numel() else 0


def delta_rule_torch(q, k, v, beta, scale, initial_state=None, cu_seqlens=None, chunk: int = CHUNK,
                     cu_seqlens_cpu=None):
    """Inputs already checked; returns ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] fp32)``.
    Dense inputs read nothing back from the device (no ``.item()``: ``torch.compile`` traces it whole);
    packed ones take the longest length from ``cu_seqlens_cpu`` when given."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    qf, kf, vf, bf = q.float(), k.float(), v.float(), beta.float()
    if cu_seqlens is not None:
        # packed [1, T, ...] -> padded [N, L, ...]; zero keys and zero beta leave the state unchanged
        longest = None if cu_seqlens_cpu is None else _longest(cu_seqlens_cpu)
        qf, kf, vf, bf = (unpack_varlen(x, cu_seqlens, multiple=chunk, longest=longest) for x in (qf, kf, vf, bf))
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
