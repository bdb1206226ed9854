"""Torch-side helpers for packed sequences and chunk tables used by linear_attention and block_attention.

(Op-local until the shared ``seqzoo/kernels/_chunk.py`` offers the same pieces.)
"""

from __future__ import annotations

import torch


def seq_spans(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    cs = cu_seqlens.tolist()
    return [(cs[i], cs[i + 1]) for i in range(len(cs) - 1)]


def pack_padded(xs, cu_seqlens: torch.Tensor, multiple: int = 1):
    """``xs``: tensors [1, T, ...] packed along T. Returns ``([N, Tp, ...] zero-padded, lengths [N])`` with
    ``Tp`` the longest sequence rounded up to ``multiple`` (at least ``multiple``)."""
    spans = seq_spans(cu_seqlens)
    lens = [e - s for s, e in spans]
    Tp = max(max(lens), 1)
    Tp = -(-Tp // multiple) * multiple
    out = []
    for x in xs:
        y = x.new_zeros((len(spans), Tp) + tuple(x.shape[2:]))
        for n, (s, e) in enumerate(spans):
            y[n, : e - s] = x[0, s:e]
        out.append(y)
    lengths = torch.tensor(lens, dtype=torch.long, device=xs[0].device)
    return out, lengths


def unpack_padded(y: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_padded`: ``[N, Tp, ...] -> [1, T, ...]``."""
    parts = [y[n, : e - s] for n, (s, e) in enumerate(seq_spans(cu_seqlens))]
    return torch.cat(parts, 0)[None]


def chunk_table(cu_seqlens: torch.Tensor | None, batch: int, seq_len: int, chunk: int, device):
    """Flattened view of all sequences for kernels that work on ``[B*T]`` tokens.

    Returns ``(cu, chunk_seq, chunk_idx, chunk_offsets)``:
    ``cu`` [N+1] int32 token offsets of each sequence in the flattened ``[B*T]`` (or packed) layout;
    ``chunk_seq`` / ``chunk_idx`` [NCt] int32: for every chunk of every sequence, its sequence and its index
    inside that sequence; ``chunk_offsets`` [N+1] int32: where each sequence's chunks start in that list.
    """
    if cu_seqlens is None:
        nc = -(-seq_len // chunk)
        cu = torch.arange(0, batch + 1, dtype=torch.int32, device=device) * seq_len
        chunk_seq = torch.arange(batch, dtype=torch.int32, device=device).repeat_interleave(nc)
        chunk_idx = torch.arange(nc, dtype=torch.int32, device=device).repeat(batch)
        chunk_offsets = torch.arange(0, batch + 1, dtype=torch.int32, device=device) * nc
        return cu, chunk_seq, chunk_idx, chunk_offsets
    cu_cpu = cu_seqlens.detach().to("cpu", torch.int64)
    lens = cu_cpu[1:] - cu_cpu[:-1]
    nc = (lens + chunk - 1) // chunk  # [N]; an empty sequence has no chunks
    chunk_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), nc.cumsum(0)])
    chunk_seq = torch.arange(len(nc)).repeat_interleave(nc)
    chunk_idx = torch.arange(int(nc.sum())) - chunk_offsets[:-1].repeat_interleave(nc)
    to = dict(dtype=torch.int32, device=device)
    return cu_cpu.to(**to), chunk_seq.to(**to), chunk_idx.to(**to), chunk_offsets.to(**to)
