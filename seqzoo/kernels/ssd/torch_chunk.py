"""Chunked SSD scan in plain PyTorch: the CPU path, differentiated by autograd.

Inside a chunk of ``C`` tokens the scan is masked, decayed matmuls (the "quadratic" dual form); across chunks a
scan of ``[P, N]`` states (README.md has the derivation). Every sequence is zero-padded to a multiple of ``C``:
a padded step has ``Δ = 0``, so it neither decays the state (``exp(0·A) = 1``) nor writes to it (``Δ x = 0``),
and the final state is exact for any T without tracking chunk lengths.

B and C stay per group (``[N, G, NC, C, N]``): ``C Bᵀ`` is computed once per group and shared by its
``H / G`` heads, and the state products take the group's heads as one matrix (see ``_chunk_scan``).
"""

from __future__ import annotations

import torch

from .._chunk import pack_varlen, pad_time, unpack_varlen
from ._dt import discretize_dt

CHUNK = 64


def _chunk_scan(x, delta, A, B, C, h0, chunk):
    """Core on padded fp32 tensors, Tp a multiple of ``chunk``.

    x: [N, Tp, H, P]; delta: [N, Tp, H] (0 on padding); A: [H]; B, C: [N, Tp, G, Ns]; h0: [N, H, P, Ns].
    Returns y [N, Tp, H, P] (without the D term) and the final state [N, H, P, Ns].

    The products that involve B or C run once per group with the group's heads side by side in the columns
    (``[C, HG·P]`` blocks read straight from x's ``[.., H, P]`` layout), so states are kept transposed,
    ``[N, G, Ns, HG·P]``; only the per-head intra-chunk product needs a head-major copy of ``Δ x``.
    """
    N, Tp, H, P = x.shape
    G, Ns = B.shape[2], B.shape[3]
    HG, NC = H // G, Tp // chunk
    cs = (delta * A).view(N, NC, chunk, H).cumsum(2)  # log-decay cumsum inside each chunk  [N, NC, C, H]
    last = cs[:, :, -1:]  # [N, NC, 1, H]
    Bc = B.view(N, NC, chunk, G, Ns).permute(0, 3, 1, 2, 4).contiguous()  # [N, G, NC, C, Ns]
    Cc = C.view(N, NC, chunk, G, Ns).permute(0, 3, 1, 2, 4).contiguous()
    v = x * delta[..., None]  # Δ x                                                  [N, Tp, H, P]

    # 1. intra-chunk (the dual, attention-like form): y_l = Σ_{s≤l} (C_l·B_s) exp(cs_l − cs_s) Δ_s x_s
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    csh = cs.permute(0, 3, 1, 2)  # [N, H, NC, C]
    seg = (csh[..., :, None] - csh[..., None, :]).masked_fill(~causal, float("-inf"))  # [N, H, NC, C, C]
    cb = Cc @ Bc.transpose(-1, -2)  # once per group                                   [N, G, NC, C, C]
    scores = cb[:, :, None] * torch.exp(seg).view(N, G, HG, NC, chunk, chunk)
    vh = v.view(N, NC, chunk, H, P).permute(0, 3, 1, 2, 4)  # head-major copy (made by the matmul)
    y = scores.view(N, H, NC, chunk, chunk) @ vh  # [N, H, NC, C, P]

    # 2. what each chunk writes to the state by its end, transposed: Σ_s B_s (exp(cs_last − cs_s) Δ_s x_s)ᵀ
    vw = (v.view(N, NC, chunk, H, P) * torch.exp(last - cs)[..., None])  # [N, NC, C, H, P]
    vw = vw.view(N, NC, chunk, G, HG * P).permute(0, 3, 1, 2, 4)  # [N, G, NC, C, HG·P] (a view)
    dS = (Bc.transpose(-1, -2) @ vw).unbind(2)  # NC × [N, G, Ns, HG·P]

    # 3. the scan of chunk states (T / C sequential steps; unbind, not indexing: the backward of NC selects
    #    would write NC full-size zero tensors)
    decay = torch.exp(last).view(N, NC, 1, G, 1, HG, 1).unbind(1)  # NC × [N, 1, G, 1, HG, 1]
    S = h0.view(N, G, HG, P, Ns).permute(0, 1, 4, 2, 3).reshape(N, G, Ns, HG, P)
    h_in = []
    for c in range(NC):
        h_in.append(S)
        S = decay[c][:, 0] * S + dS[c].view(N, G, Ns, HG, P)
    h_in = torch.stack(h_in, 2).view(N, G, NC, Ns, HG * P)  # state entering each chunk (transposed)

    # 4. inter-chunk: y_l += exp(cs_l) S_in C_l, computed for the group's heads at once
    y_off = (Cc @ h_in).view(N, G, NC, chunk, HG, P).permute(0, 2, 3, 1, 4, 5).reshape(N, NC, chunk, H, P)
    y = y.permute(0, 2, 3, 1, 4) + y_off * torch.exp(cs)[..., None]  # [N, NC, C, H, P]
    final = S.permute(0, 1, 3, 4, 2).reshape(N, H, P, Ns)
    return y.reshape(N, Tp, H, P), final


def ssd_scan_torch(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")),
                   initial_state=None, output_final_state=False, cu_seqlens=None, chunk_size=CHUNK):
    """Inputs already checked by the public function. Returns (y in x's dtype, final state fp32 or None)."""
    Bsz, T, H, P = x.shape
    Ns = B.shape[-1]
    delta = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, T, H] fp32
    xf, Bf, Cf = x.float(), B.float(), C.float()
    if cu_seqlens is None:
        chunk_size = min(chunk_size, T)  # short inputs (decoding) are not padded to a whole chunk
        N = Bsz
        xp, dp, Bp, Cp = (pad_time(t, chunk_size) for t in (xf, delta, Bf, Cf))
    else:
        N = cu_seqlens.numel() - 1
        xp, dp, Bp, Cp = (unpack_varlen(t, cu_seqlens, multiple=chunk_size) for t in (xf, delta, Bf, Cf))
    h0 = xf.new_zeros(N, H, P, Ns) if initial_state is None else initial_state.float()
    y, final = _chunk_scan(xp, dp, A.float(), Bp, Cp, h0, chunk_size)
    y = y[:, :T] if cu_seqlens is None else pack_varlen(y, cu_seqlens)  # [B, T, H, P]
    if D is not None:
        y = y + (D.float() if D.dim() == 2 else D.float()[:, None]) * xf
    return y.to(x.dtype), (final if output_final_state else None)
