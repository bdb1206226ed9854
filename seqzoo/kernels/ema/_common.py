"""Pieces both torch paths of the EMA use: dense/packed layout, sums of powers of the decay."""

from __future__ import annotations

import torch

from .._chunk import ceil_div, pack_varlen, seq_lens, unpack_varlen

POW_BLOCK = 256  # a^t = a^(k·POW_BLOCK) · a^j: two small exp tables instead of a [D, N, T] one


def log_decay(a: torch.Tensor) -> torch.Tensor:
    """``log a`` in fp32; a = 0 is clamped so that ``0^0 = 1`` stays finite."""
    return torch.log(a.float().clamp_min(1e-38))


def power_sum(coef: torch.Tensor, la: torch.Tensor, T: int) -> torch.Tensor:
    """``out[..., d, t] = Σ_n coef[..., d, n] · a[d, n]^t`` for ``t < T`` (``la = log a``, ``[D, N]``).

    MEGA builds the kernel as ``exp(t·log a)`` over a ``[D, N, T]`` table (4.3 GB at D = 512, N = 16,
    T = 131072); splitting ``t = k·Bk + j`` needs an ``[nb, D, N]`` and a ``[D, N, Bk]`` table and one batched
    matmul, with the same values to fp32 rounding."""
    D, N = la.shape
    lead = coef.shape[:-2]
    coef = coef.reshape(-1, D, N)  # [M, D, N]
    M = coef.shape[0]
    bk = min(POW_BLOCK, T)
    nb = ceil_div(T, bk)
    j = torch.arange(bk, device=la.device, dtype=torch.float32)
    k = torch.arange(nb, device=la.device, dtype=torch.float32) * bk
    inner = torch.exp(la[..., None] * j)  # [D, N, bk]
    outer = torch.exp(la[None] * k[:, None, None])  # [nb, D, N]
    w = (coef[:, None] * outer[None]).permute(2, 0, 1, 3).reshape(D, M * nb, N)  # [D, M·nb, N]
    out = torch.bmm(w, inner).reshape(D, M, nb * bk)[..., :T]  # [D, M, T]
    return out.permute(1, 0, 2).reshape(*lead, D, T)


def to_rows(x: torch.Tensor, cu_host):
    """``[B, T, D]`` (dense) or packed ``[1, T, D]`` -> rows ``[R, L, D]`` zero-padded at the end, and the
    row lengths (a host list)."""
    if cu_host is None:
        return x, [x.shape[1]] * x.shape[0]
    cu = cu_host.to(x.device)
    return unpack_varlen(x, cu), seq_lens(cu_host).tolist()


def from_rows(y: torch.Tensor, cu_host):
    if cu_host is None:
        return y
    return pack_varlen(y, cu_host.to(y.device))


def flip_rows(x: torch.Tensor, lens) -> torch.Tensor:
    """Reverse the first ``lens[r]`` steps of every row (the zero padding stays at the end)."""
    R, L, _ = x.shape
    t = torch.arange(L, device=x.device)
    n = torch.tensor(lens, device=x.device)[:, None]  # [R, 1]
    idx = torch.where(t[None] < n, n - 1 - t[None], t[None])  # [R, L]
    return x.gather(1, idx[..., None].expand_as(x))


def final_state(x: torch.Tensor, lens, la: torch.Tensor, b: torch.Tensor, h0) -> torch.Tensor:
    """``h_T = a^len·h0 + Σ_s a^(len-1-s)·b·x_s`` per row: ``[R, D, N]``. With ``xr`` the row reversed,
    ``Σ_τ a^τ xr_τ`` splits as in :func:`power_sum`: one batched matmul per block of powers."""
    R, L, D = x.shape
    N = la.shape[1]
    xr = flip_rows(x, lens)  # xr[r, τ] = x[r, len - 1 - τ]; zeros past len
    bk = min(POW_BLOCK, max(L, 1))
    nb = ceil_div(max(L, 1), bk)
    xr = torch.nn.functional.pad(xr, (0, 0, 0, nb * bk - L))  # [R, nb·bk, D]
    j = torch.arange(bk, device=la.device, dtype=torch.float32)
    k = torch.arange(nb, device=la.device, dtype=torch.float32) * bk
    inner = torch.exp(la[..., None] * j)  # [D, N, bk]
    outer = torch.exp(la[None] * k[:, None, None])  # [nb, D, N]
    xb = xr.reshape(R, nb, bk, D).permute(3, 2, 0, 1).reshape(D, bk, R * nb)  # [D, bk, R·nb]
    part = torch.bmm(inner, xb).reshape(D, N, R, nb)  # Σ_j a^j xr[k·bk + j]
    h = torch.einsum("dnrk,kdn->rdn", part, outer) * b  # [R, D, N]
    if h0 is not None:
        n = torch.tensor(lens, device=x.device, dtype=torch.float32)
        h = h + torch.exp(la[None] * n[:, None, None]) * h0.float()
    return h
