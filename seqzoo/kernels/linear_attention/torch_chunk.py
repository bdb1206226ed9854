"""Chunked, matmul-shaped linear attention in plain PyTorch: the CPU path, differentiated by autograd.

Tokens are cut into chunks of ``C``; inside a chunk the work is two masked matmuls, across chunks a scan of
``[K, V]`` states (see README.md for the derivation). Every sequence (a batch row, or one packed sequence
of ``cu_seqlens``) is padded with zeros to a multiple of ``C``; the true length of each chunk ``L`` is used
for the decay to the chunk end, so padding never leaks into the final state.
"""

from __future__ import annotations

import torch

from .._chunk import pack_varlen, pad_time, seq_lens, unpack_varlen, unpad_time

CHUNK = 64


def _chunk_scan(q, k, v, lengths, g, scale, h0, C):
    """Core on padded fp32 tensors.

    q, k: [N, Tp, H, K]; v: [N, Tp, H, V] with Tp a multiple of C, zeros past each length;
    lengths: [N] int64 (on q's device); g: [H] fp32 log-decay or None; h0: [N, H, K, V] fp32.
    Returns o [N, Tp, H, V] fp32 and the final state [N, H, K, V] fp32.
    """
    N, Tp, H, K = q.shape
    V = v.shape[-1]
    NC = Tp // C
    dev = q.device
    # [N, H, NC, C, D]
    qc = q.view(N, NC, C, H, K).permute(0, 3, 1, 2, 4)
    kc = k.view(N, NC, C, H, K).permute(0, 3, 1, 2, 4)
    vc = v.view(N, NC, C, H, V).permute(0, 3, 1, 2, 4)
    pos = torch.arange(C, device=dev)
    # true length of every chunk: [N, NC]
    L = (lengths[:, None] - torch.arange(NC, device=dev)[None] * C).clamp(0, C)
    causal_mask = pos[:, None] >= pos[None, :]  # [C, C]
    if g is None:
        D = causal_mask.float()[None]  # [1, C, C]
        q_dec = None
        k_dec = (pos[None, None, :] < L[:, :, None]).float()[:, None]  # [N, 1, NC, C]
        c_dec = None
    else:
        gh = g.view(H, 1, 1)
        rel = (pos[:, None] - pos[None, :]).float()  # i - j
        D = torch.where(causal_mask, torch.exp(gh * rel.clamp(min=0)), torch.zeros((), device=dev))  # [H, C, C]
        q_dec = torch.exp(g.view(H, 1) * (pos + 1).float())  # [H, C]
        to_end = (L[:, None, :, None] - 1 - pos).float()  # [N, 1, NC, C]
        k_dec = torch.where(to_end >= 0, torch.exp(g.view(1, H, 1, 1) * to_end.clamp(min=0)),
                            torch.zeros((), device=dev))  # [N, H, NC, C]
        c_dec = torch.exp(g.view(1, H, 1) * L[:, None, :].float())  # [N, H, NC]
    # intra-chunk part: ((Q Kᵀ) ⊙ D) V
    A = (qc @ kc.transpose(-1, -2)) * D[:, None]  # [N, H, NC, C, C]
    o = A @ vc  # [N, H, NC, C, V]
    # what each chunk adds to the state at its end: (K ⊙ k_dec)ᵀ V
    dS = (kc * k_dec[..., None]).transpose(-1, -2) @ vc  # [N, H, NC, K, V]
    if c_dec is None:
        states = torch.cat([h0[:, :, None], dS], 2).cumsum(2)  # [N, H, NC + 1, K, V]
        h_in, final = states[:, :, :-1], states[:, :, -1]
    else:
        S, h_list = h0, []
        for c in range(NC):
            h_list.append(S)
            S = c_dec[:, :, c, None, None] * S + dS[:, :, c]
        h_in, final = torch.stack(h_list, 2), S  # [N, H, NC, K, V]
    qd = qc if q_dec is None else qc * q_dec[None, :, None, :, None]
    o = scale * (o + qd @ h_in)  # [N, H, NC, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(N, Tp, H, V)
    return o, final


def linear_attention_torch(q, k, v, decay=None, scale=1.0, causal=True, initial_state=None,
                           output_final_state=False, cu_seqlens=None, chunk_size=CHUNK, cu_seqlens_cpu=None):
    """Inputs already checked by the public function. Returns (o in q's dtype, final state fp32 or None).
    Dense inputs read nothing back from the device (``torch.compile`` traces them without a graph break);
    packed ones take the longest length from ``cu_seqlens_cpu`` when given."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = q.dtype
    qf, kf, vf = q.float(), k.float(), v.float()
    g = None if decay is None else decay.detach().float()
    # [N, Tp, H, *] padded per sequence
    if cu_seqlens is None:
        N = B
        if causal:
            qf, kf, vf = (pad_time(x, chunk_size) for x in (qf, kf, vf))
        lengths = torch.full((B,), T, dtype=torch.long, device=q.device)
    else:
        N = cu_seqlens.numel() - 1
        mult = chunk_size if causal else 1
        longest = None
        if cu_seqlens_cpu is not None:
            longest = int(seq_lens(cu_seqlens_cpu).max()) if cu_seqlens_cpu.numel() > 1 else 0
        qf, kf, vf = (unpack_varlen(x, cu_seqlens, multiple=mult, longest=longest) for x in (qf, kf, vf))
        lengths = seq_lens(cu_seqlens).long()
    h0 = (torch.zeros(N, H, K, V, dtype=torch.float32, device=q.device) if initial_state is None
          else initial_state.float())
    if causal:
        o, final = _chunk_scan(qf, kf, vf, lengths, g, scale, h0, chunk_size)
    else:
        # every query reads the state after its whole sequence (zero padding adds nothing)
        final = h0 + torch.einsum("nthk,nthv->nhkv", kf, vf)  # [N, H, K, V]
        o = scale * torch.einsum("nthk,nhkv->nthv", qf, final)
    if cu_seqlens is None:
        o = unpad_time(o, T)
    else:
        o = pack_varlen(o, cu_seqlens)  # [1, T, H, V]
    return o.to(dtype), (final if output_final_state else None)
