"""Padded batch <-> packed sequences, once for every mixer that runs a varlen kernel.

``pack(mask)`` reads a ``[B, T]`` attention mask (1 = token; left, right or scattered padding) and returns a
:class:`Packed`: the flat positions of the real tokens and ``cu_seqlens`` with one sequence per row (a row
with no token is an empty sequence, so per-row states keep their order). ``packed.pack(x)`` turns
``[B, T, ...]`` into ``[1, N, ...]``; ``packed.unpack(y)`` puts ``[1, N, ...]`` back as ``[B, T, ...]`` with
zeros at the pads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    index: torch.Tensor  # [N] flat positions (b * T + t) of the real tokens, in row-major order
    cu_seqlens: torch.Tensor  # [B + 1] int32 offsets; sequence b = row b's real tokens
    batch: int
    seq_len: int

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [1, N, ...]."""
        return x.reshape(self.batch * self.seq_len, *x.shape[2:]).index_select(0, self.index)[None]

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """[1, N, ...] -> [B, T, ...], zeros at pad positions."""
        out = y.new_zeros(self.batch * self.seq_len, *y.shape[2:])
        out = out.index_copy(0, self.index, y[0])
        return out.view(self.batch, self.seq_len, *y.shape[2:])


def pack(mask: torch.Tensor) -> Packed:
    """``mask`` [B, T] (1 = token) -> :class:`Packed`."""
    if mask.dim() != 2:
        raise ValueError(f"pack: attention_mask must be [B, T], got shape {list(mask.shape)}")
    B, T = mask.shape
    real = mask.bool()
    index = real.reshape(-1).nonzero().squeeze(-1)  # [N]
    lens = real.sum(1)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = lens.cumsum(0)
    return Packed(index, cu, B, T)
