"""Batches over a byte array: random training windows, and the two ways of scoring a split in order.

Conventions (all three): a batch holds ``input_ids`` ``[B, T]`` and ``targets`` ``[B, T]`` where
``targets[b, t]`` is the byte that follows ``input_ids[b, t]`` in the corpus (already shifted: the logits at
``t`` are scored against ``targets[t]``), and -100 marks a position that is not scored (context, padding).
Pre-shifted targets, unlike the Hugging Face ``labels``, let a segment's last position predict the first byte of
the next segment, which is what makes segment-carrying evaluation score every byte exactly once.

Training (:class:`TrainWindows`): the split is cut into strata of ``seq_len`` bytes; window ``i`` starts at a
seeded random offset inside stratum ``i`` and spans ``seq_len + 1`` bytes (``seq_len`` inputs and their
``seq_len`` next bytes). So one epoch visits every region of the corpus once, at random alignment, and window
``i`` is a pure function of ``(seed, i)``: whoever orders the indices (the trainer's epoch sampler) decides the
order, and resuming at a step reproduces the same windows.

Evaluation, every byte of ``[lo, hi)`` scored exactly once (the first byte of the file, which has nothing before
it, is the only byte never scored):

- :class:`CarryBatches` (recurrent models): the split is cut into ``streams`` contiguous pieces, one per batch
  row, each read in consecutive segments of ``segment`` tokens; the model's cache carries each row's state from
  one segment to the next. Each row starts ``context`` bytes before its first scored byte (those bytes only warm
  the state up), so a row that begins in the middle of the split is not scored from an empty state. With one
  stream this is exactly "the whole split as one sequence".
- :class:`WindowBatches` (attention, or any causal model): windows of ``context + stride - 1`` inputs, each
  scoring its last ``stride`` bytes, so every scored byte sees at least ``context`` bytes before it. Windows are
  independent (no cache between them), so they are batched and sharded freely.

Both shard over ``world`` processes with the same number of batches on every process (a DDP/FSDP-wrapped model
runs in lockstep); padding rows and positions have targets -100 and are never counted. Right padding needs no
attention mask: every model here is causal, so a pad can only change the outputs after it, which are not scored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100
PAD_BYTE = 0  # input value at padded positions (never scored, and after every scored position of its row)


class _Bytes:
    """A byte array that survives pickling by reference: a DataLoader worker started with ``spawn`` reopens the
    memmap by file name instead of receiving a copy of the corpus."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self._filename = getattr(data, "filename", None)
        self._offset = getattr(data, "offset", 0)
        self._length = int(data.shape[0])

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self._filename, dtype=np.uint8, mode="r", offset=self._offset,
                                   shape=(self._length,))
        return self._data

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._filename is not None:
            state["_data"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Bytes ``[lo, hi)`` as int64 (a copy; the memmap is read only here)."""
        return np.asarray(self.data[lo:hi], dtype=np.int64)


def _check_range(n: int, lo: int, hi: int) -> None:
    if not 0 <= lo < hi <= n:
        raise ValueError(f"byte range: expected 0 <= lo < hi <= {n}, got lo={lo}, hi={hi}")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------


class TrainWindows(torch.utils.data.Dataset):
    """Training windows over bytes ``[lo, hi)`` of ``data``: example ``i`` is
    ``{"input_ids": x [seq_len], "targets": y [seq_len]}`` with ``x = data[s : s + seq_len]`` and
    ``y = data[s + 1 : s + seq_len + 1]``, ``s = starts[i]`` (a seeded random offset in stratum ``i``)."""

    def __init__(self, data: np.ndarray, lo: int, hi: int, seq_len: int, seed: int):
        _positive("seq_len", seq_len)
        _check_range(len(data), lo, hi)
        if hi - lo < seq_len + 1:
            raise ValueError(f"seq_len: the range [{lo}, {hi}) has {hi - lo} bytes, fewer than one window of "
                             f"seq_len + 1 = {seq_len + 1}")
        self.bytes, self.seq_len = _Bytes(data), seq_len
        n = (hi - lo - 1) // seq_len  # strata of seq_len bytes; the last window may end past hi: clipped below
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x6279746573])))
        jitter = rng.integers(0, seq_len, size=n)  # [n]
        starts = lo + np.arange(n, dtype=np.int64) * seq_len + jitter
        self.starts = np.minimum(starts, hi - seq_len - 1)  # every window ends inside the range

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitem__(self, i: int) -> dict:
        s = int(self.starts[i])
        w = torch.from_numpy(self.bytes.read(s, s + self.seq_len + 1))  # [seq_len + 1]
        return {"input_ids": w[:-1], "targets": w[1:]}


def collate_windows(examples: list[dict]) -> dict:
    """Stack equal-length training windows (no padding: every window has seq_len bytes)."""
    return {"input_ids": torch.stack([e["input_ids"] for e in examples]),
            "targets": torch.stack([e["targets"] for e in examples])}


# --------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------


def _row(bytes_: _Bytes, a: int, e: int, scored_from: int, t0: int, t1: int):
    """Inputs ``data[a + t0 : a + t1]`` of the piece that starts at byte ``a`` and predicts bytes up to ``e``
    (exclusive), with their targets; targets of bytes before ``scored_from`` are -100."""
    t1 = min(t1, e - 1 - a)
    if t1 <= t0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = bytes_.read(a + t0, a + t1 + 1)
    inputs, targets = x[:-1], x[1:].copy()
    target_pos = a + 1 + np.arange(t0, t1)  # the corpus index of each target byte
    targets[target_pos < scored_from] = IGNORE_INDEX
    return inputs, targets


def _stack(rows: list[tuple[np.ndarray, np.ndarray]], width: int | None = None) -> dict:
    width = max([len(x) for x, _ in rows] + [1]) if width is None else width
    ids = np.full((len(rows), width), PAD_BYTE, dtype=np.int64)
    tgt = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = x
        tgt[i, : len(y)] = y
    return {"input_ids": torch.from_numpy(ids), "targets": torch.from_numpy(tgt)}


class CarryBatches:
    """Segments of ``streams_per_rank * world`` contiguous streams over bytes ``[lo, hi)``, in order; this
    process (``rank``) gets rows ``[rank * B, (rank + 1) * B)`` with ``B = streams_per_rank``. Batch ``k`` holds
    tokens ``[k * segment, (k + 1) * segment)`` of every row; the model carries each row's state from batch
    ``k`` to ``k + 1`` (``batch["carry_state"]`` is True)."""

    carry_state = True

    def __init__(self, data: np.ndarray, lo: int, hi: int, *, segment: int, context: int, streams_per_rank: int,
                 rank: int = 0, world: int = 1):
        _check_range(len(data), lo, hi)
        for name, v in (("segment", segment), ("context", context), ("streams_per_rank", streams_per_rank),
                        ("world", world)):
            _positive(name, v)
        if not 0 <= rank < world:
            raise ValueError(f"rank: expected 0 <= rank < world = {world}, got {rank}")
        self.bytes, self.segment = _Bytes(data), segment
        first = max(lo, 1)  # byte 0 of the file has no byte before it: it cannot be predicted
        n, total = hi - first, streams_per_rank * world
        bounds = [first + (b * n) // total for b in range(total + 1)]  # stream b scores [bounds[b], bounds[b+1])
        rows = []
        for b in range(rank * streams_per_rank, (rank + 1) * streams_per_rank):
            p, e = bounds[b], bounds[b + 1]
            a = max(0, p - context)  # the first input byte: `context` bytes of warm-up before p
            rows.append((a, e, p) if e > p else (p, p, p))  # (input start, end of targets, first scored byte)
        self.rows = rows
        self.num_scored = sum(e - p for _, e, p in rows)
        # inputs of the longest stream of any rank: every rank runs that many batches
        longest = max((bounds[b + 1] - 1 - max(0, bounds[b] - context) for b in range(total)
                       if bounds[b + 1] > bounds[b]), default=0)
        self.num_batches = math.ceil(longest / segment)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        S = self.segment
        for k in range(self.num_batches):
            rows = [_row(self.bytes, a, e, p, k * S, (k + 1) * S) for a, e, p in self.rows]
            batch = _stack(rows)
            batch["carry_state"] = True
            yield batch


class WindowBatches:
    """Sliding windows over bytes ``[lo, hi)``: window ``k`` scores bytes ``[s_k, s_k + stride)`` from inputs
    that start ``context`` bytes before ``s_k`` (fewer only at the start of the file). This process gets windows
    ``rank, rank + world, ...``, ``batch_size`` per batch, padded so every process has the same number."""

    carry_state = False

    def __init__(self, data: np.ndarray, lo: int, hi: int, *, stride: int, context: int, batch_size: int,
                 rank: int = 0, world: int = 1):
        _check_range(len(data), lo, hi)
        for name, v in (("stride", stride), ("context", context), ("batch_size", batch_size), ("world", world)):
            _positive(name, v)
        if not 0 <= rank < world:
            raise ValueError(f"rank: expected 0 <= rank < world = {world}, got {rank}")
        self.bytes, self.stride, self.context, self.batch_size = _Bytes(data), stride, context, batch_size
        self.first, self.hi = max(lo, 1), hi
        num_windows = math.ceil((hi - self.first) / stride)
        self.windows = list(range(rank, num_windows, world))
        per_rank = math.ceil(num_windows / world)
        self.num_batches = math.ceil(per_rank / batch_size)
        self.num_scored = sum(min(self.first + (k + 1) * stride, hi) - (self.first + k * stride)
                              for k in self.windows)

    def __len__(self) -> int:
        return self.num_batches

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.first + k * self.stride
        e = min(s + self.stride, self.hi)
        a = max(0, s - self.context)
        return _row(self.bytes, a, e, s, 0, e - 1 - a)

    def __iter__(self):
        B = self.batch_size
        for j in range(self.num_batches):
            ks = self.windows[j * B: (j + 1) * B]
            rows = [self.window(k) for k in ks]
            if not rows:  # this rank has run out of windows but others have not: one empty row keeps lockstep
                rows = [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
            batch = _stack(rows)
            batch["carry_state"] = False
            yield batch
