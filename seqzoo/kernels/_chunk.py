"""Torch-side chunking utilities shared by the chunked ops (delta rule, linear attention, ...).

Everything here is plain PyTorch, differentiable where it moves data, and cheap next to the kernels it
feeds. Layout conventions follow the kernel contract: activations are ``[B, T, H, D]``; packed
variable-length batches have ``B == 1`` and ``cu_seqlens = [0, end_0, end_1, ..., T]`` (int32/int64).

Pieces:

- :func:`ceil_div`, :func:`seq_lens`, :func:`uniform_cu_seqlens`
- :func:`pad_time` / :func:`unpad_time`: pad ``T`` up to a multiple of the chunk size (and cut it back).
- :func:`unpack_varlen` / :func:`pack_varlen`: packed ``[1, T, ...]`` <-> padded ``[N, L, ...]``.
- :func:`chunk_indices`, :func:`chunk_offsets`: the tables a varlen Triton kernel needs to map a program
  id to (sequence, chunk-in-sequence) and a sequence to its first chunk in a per-chunk buffer.
- :func:`varlen_host`, :func:`num_chunks`, :func:`varlen_chunk_tables`: the same tables without a host sync
  when a host copy of ``cu_seqlens`` is at hand (``cu_seqlens_cpu``, as in fla). Dense inputs need no
  tables at all: kernels index them directly (``seqzoo.kernels._triton_utils.chunk_span``).
- :func:`l2_normalize`: ``x / sqrt(sum(x^2) + eps)`` over the last dim, computed in fp32.

Once a function is here other ops depend on it: extend, never change a signature or a meaning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "ceil_div",
    "seq_lens",
    "uniform_cu_seqlens",
    "pad_time",
    "unpad_time",
    "unpack_varlen",
    "pack_varlen",
    "chunk_indices",
    "chunk_offsets",
    "num_chunks",
    "varlen_host",
    "varlen_chunk_tables",
    "l2_normalize",
]


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints."""
    return -(-int(a) // int(b))


def seq_lens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Lengths of the packed sequences, ``cu_seqlens[1:] - cu_seqlens[:-1]`` (same dtype and device)."""
    return cu_seqlens[1:] - cu_seqlens[:-1]


def uniform_cu_seqlens(batch: int, seq_len: int, device=None, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``[0, T, 2T, ..., B*T]``: a dense ``[B, T, ...]`` batch seen as ``B`` packed sequences of length T.

    Lets a kernel written for packed sequences also serve dense batches after ``x.reshape(1, B*T, ...)``.
    """
    return torch.arange(batch + 1, device=device, dtype=dtype) * int(seq_len)


def pad_time(x: torch.Tensor, multiple: int, dim: int = 1, value: float = 0.0) -> torch.Tensor:
    """Pad dim ``dim`` (time, by default of ``[B, T, ...]``) at its end up to a multiple of ``multiple``.

    Returns ``x`` itself when no padding is needed. Differentiable. The caller chooses ``value`` so that
    padded steps do not change the state (zeros for keys / write strengths in linear-attention-like ops).
    """
    length = x.shape[dim]
    extra = ceil_div(length, multiple) * multiple - length
    if extra == 0:
        return x
    dim = dim % x.dim()
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]  # F.pad lists dims from the last one backwards
    return F.pad(x, pad, value=value)


def unpad_time(x: torch.Tensor, length: int, dim: int = 1) -> torch.Tensor:
    """Undo :func:`pad_time`: keep the first ``length`` steps of dim ``dim``."""
    if x.shape[dim] == length:
        return x
    return x.narrow(dim, 0, length)


def _varlen_index(cu_seqlens: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    lens = seq_lens(cu_seqlens).long()
    steps = torch.arange(max_len, device=cu_seqlens.device)
    valid = steps[None, :] < lens[:, None]  # [N, L]
    idx = cu_seqlens[:-1].long()[:, None] + steps[None, :]  # [N, L]
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx, valid


def unpack_varlen(
    x: torch.Tensor, cu_seqlens: torch.Tensor, *, multiple: int = 1, max_len: int | None = None,
    longest: int | None = None,
) -> torch.Tensor:
    """Packed ``[1, T, *rest]`` -> zero-padded ``[N, L, *rest]`` where sequence ``n`` occupies
    ``out[n, :len_n]``. ``L`` is ``max_len`` (default: the longest sequence) rounded up to ``multiple``
    (at least ``multiple`` so the result is never empty along time). Differentiable (a gather).
    ``longest``: the longest sequence's length when the caller knows it on the host (e.g. from
    ``cu_seqlens_cpu``); it saves reading it back from the device (a sync)."""
    if x.shape[0] != 1:
        raise ValueError(f"unpack_varlen: x must have batch size 1 (packed), got shape {list(x.shape)}")
    lens = seq_lens(cu_seqlens)
    if longest is None:
        longest = int(lens.max().item()) if lens.numel() else 0
    L = longest if max_len is None else max(int(max_len), longest)
    L = max(ceil_div(L, multiple) * multiple, multiple)
    idx, valid = _varlen_index(cu_seqlens, L)
    out = x[0][idx]  # [N, L, *rest]
    mask = valid.reshape(valid.shape + (1,) * (x.dim() - 2)).to(x.dtype)
    return out * mask


def pack_varlen(y: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unpack_varlen`: padded ``[N, L, *rest]`` -> packed ``[1, T, *rest]``
    (the padding positions are dropped). Differentiable."""
    _, valid = _varlen_index(cu_seqlens, y.shape[1])
    return y[valid].unsqueeze(0)


def chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int, *, num_chunks: int | None = None) -> torch.Tensor:
    """int32 ``[NC, 2]``: for each chunk of the packed batch, ``(sequence n, chunk index within n)``.

    Chunks never straddle a sequence boundary; sequence ``n`` has ``ceil(len_n / chunk_size)`` chunks
    (zero for an empty sequence). A chunk-parallel kernel launches ``NC`` programs along one grid axis and
    reads its row to find ``bos = cu_seqlens[n] + i * chunk_size`` and ``eos = min(bos + chunk_size,
    cu_seqlens[n + 1])``. ``num_chunks`` (``NC``, known on the host, see :func:`num_chunks`) makes the
    construction sync-free on a GPU; without it ``NC`` is read back from the device.
    """
    lens = seq_lens(cu_seqlens).long()
    nt = (lens + chunk_size - 1) // chunk_size
    offsets = torch.cat([nt.new_zeros(1), nt.cumsum(0)])
    total = int(offsets[-1].item()) if num_chunks is None else int(num_chunks)
    seq = torch.repeat_interleave(torch.arange(nt.numel(), device=cu_seqlens.device), nt, output_size=total)
    within = torch.arange(total, device=cu_seqlens.device) - offsets[seq]
    return torch.stack([seq, within], dim=1).to(torch.int32).contiguous()


def chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """int32 ``[N + 1]``: ``offsets[n]`` is the index of sequence ``n``'s first chunk among all chunks;
    ``offsets[-1]`` is the total chunk count. Per-chunk buffers (e.g. chunk states ``[NC, H, K, V]``)
    are indexed by ``offsets[n] + i``."""
    lens = seq_lens(cu_seqlens).long()
    nt = (lens + chunk_size - 1) // chunk_size
    return torch.cat([nt.new_zeros(1), nt.cumsum(0)]).to(torch.int32).contiguous()


def num_chunks(cu_seqlens_cpu: torch.Tensor, chunk_size: int) -> int:
    """``NC = sum_n ceil(len_n / chunk_size)`` from a host copy of ``cu_seqlens`` (no device work)."""
    if cu_seqlens_cpu.device.type != "cpu":
        raise ValueError(f"num_chunks: cu_seqlens_cpu must be a CPU tensor, got one on {cu_seqlens_cpu.device}")
    lens = seq_lens(cu_seqlens_cpu).long()
    return int(((lens + chunk_size - 1) // chunk_size).sum())


def varlen_host(cu_seqlens: torch.Tensor, cu_seqlens_cpu: torch.Tensor | None = None) -> torch.Tensor:
    """The host copy of ``cu_seqlens``: ``cu_seqlens_cpu`` when the caller has one (no sync), else one
    device->host copy (a sync on CUDA; a no-op for CPU tensors)."""
    if cu_seqlens_cpu is not None:
        return cu_seqlens_cpu
    return cu_seqlens.detach().to("cpu")


def varlen_chunk_tables(
    cu_seqlens: torch.Tensor, chunk_size: int, cu_seqlens_cpu: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cu int32 [N + 1], chunk table int32 [NC, 2], chunk offsets int32 [N + 1])`` on ``cu_seqlens``'s
    device for a packed batch. The tables are built on the device from ``cu_seqlens`` itself; the host copy
    only supplies ``NC`` (the grid size), so with ``cu_seqlens_cpu`` given nothing synchronizes."""
    host = varlen_host(cu_seqlens, cu_seqlens_cpu)
    cu = cu_seqlens.to(torch.int32).contiguous()
    nc = num_chunks(host, chunk_size)
    return cu, chunk_indices(cu, chunk_size, num_chunks=nc), chunk_offsets(cu, chunk_size)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x**2, -1) + eps)`` computed in fp32, returned in ``x``'s dtype. Differentiable."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
