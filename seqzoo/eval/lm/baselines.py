"""Baselines that need no training, for the same test split as the models:

- :func:`lzma_bpb`: the size of the split compressed by ``lzma`` (xz, preset 9 extreme), in bits per byte.
  A compressor is an adaptive model that starts from nothing at the split's first byte; a trained model that
  does not beat it has learnt less than a dictionary coder picks up on the fly.
- :func:`ngram_bpb`: an order-``k`` byte n-gram (``k`` bytes of context) with add-one (Laplace) smoothing,
  counted on the train split: ``p(c | ctx) = (count(ctx, c) + 1) / (count(ctx) + 256)``, scored on every byte
  of the split with the ``k`` bytes before it (taken from the corpus, as the models do).
"""

from __future__ import annotations

import lzma

import numpy as np

_CHUNK = 1 << 23  # bytes per counting pass (the index array of a chunk is 8 bytes per byte)


def lzma_bpb(data: bytes | np.ndarray) -> float:
    """Compressed bits per byte of ``data`` with ``lzma`` (xz container, preset 9 | PRESET_EXTREME); the ~60
    bytes of container header are included."""
    raw = bytes(np.asarray(data, dtype=np.uint8)) if not isinstance(data, bytes) else data
    if not raw:
        raise ValueError("data: expected at least one byte, got none")
    return 8.0 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw)


def _context_index(data: np.ndarray, order: int, lo: int, hi: int) -> np.ndarray:
    """For each position t in [lo, hi): the integer sum_j data[t - order + j] * 256^(order - 1 - j)."""
    idx = np.zeros(hi - lo, dtype=np.int64)
    for j in range(order):
        idx = idx * 256 + np.asarray(data[lo - order + j: hi - order + j], dtype=np.int64)
    return idx


def ngram_bpb(data: np.ndarray, train: tuple[int, int], split: tuple[int, int], order: int = 2) -> float:
    """Bits per byte of bytes ``split = (lo, hi)`` of ``data`` under an add-one-smoothed order-``order`` byte
    model counted on ``train = (lo, hi)`` (positions with fewer than ``order`` bytes before them in ``data``
    are skipped in both)."""
    if not 0 <= order <= 3:
        raise ValueError(f"order: expected 0..3 (the table has 256^(order+1) entries), got {order}")
    size = 256 ** (order + 1)
    counts = np.zeros(size, dtype=np.int64)
    lo, hi = max(train[0], order), train[1]
    for a in range(lo, hi, _CHUNK):
        b = min(a + _CHUNK, hi)
        full = _context_index(data, order, a, b) * 256 + np.asarray(data[a:b], dtype=np.int64)
        counts += np.bincount(full, minlength=size)
    ctx_counts = counts.reshape(-1, 256).sum(1)  # [256^order]
    lo, hi = max(split[0], order), split[1]
    if hi <= lo:
        raise ValueError(f"split: no byte of {split} has {order} bytes before it")
    bits = 0.0
    for a in range(lo, hi, _CHUNK):
        b = min(a + _CHUNK, hi)
        ctx = _context_index(data, order, a, b)
        full = ctx * 256 + np.asarray(data[a:b], dtype=np.int64)
        p = (counts[full] + 1.0) / (ctx_counts[ctx] + 256.0)
        bits -= float(np.log2(p).sum())
    return bits / (hi - lo)

