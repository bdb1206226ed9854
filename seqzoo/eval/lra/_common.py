"""Pieces every LRA task shares: token ids of the byte/pixel tasks, split seeds, and the error a missing data
file raises.

Byte and pixel tasks (text, retrieval, image, Pathfinder) use the ids of :class:`seqzoo.ByteTokenizer`: the
value itself for bytes and pixels (0..255), then ``<pad>`` = 256, ``<bos>`` = 257, ``<eos>`` = 258 (vocabulary
259, the model config's default). ListOps has its own 16-id vocabulary (:mod:`.listops`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...common import ConfigError

BYTE_VOCAB_SIZE = 259  # 256 values + <pad> <bos> <eos>, as seqzoo.ByteTokenizer
BYTE_PAD_ID = 256

SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}

# where the released LRA data comes from (the archive holds listops-1000/, tsv_data/, pathfinder32/, ...)
LRA_RELEASE = ("lra_release.gz from https://github.com/google-research/long-range-arena "
               "(https://storage.googleapis.com/long-range-arena/lra_release.gz; unpack with tar -xzf)")


class MissingDataError(ConfigError):
    """A data file or folder the task needs is not there. The message says what to put where."""


def split_seed(seed: int, split: str) -> int:
    """A distinct, reproducible 32-bit seed per (seed, split)."""
    return int(np.random.SeedSequence([int(seed), SPLIT_INDEX[split]]).generate_state(1)[0])


def require_file(path: Path, what: str, how: str) -> Path:
    """``path`` if it is a file, else a :class:`MissingDataError` naming it, ``what`` it should hold and ``how``
    to get it."""
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise MissingDataError(f"{what}: {str(path)!r} {state}. {how}")
    return path


def require_dir(path: Path, what: str, how: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise MissingDataError(f"{what}: {str(path)!r} {state}. {how}")
    return path


def check_split(split: str) -> str:
    if split not in SPLIT_INDEX:
        raise ValueError(f"split: expected one of {', '.join(SPLIT_INDEX)}, got {split!r}")
    return split


def encode_bytes(text: str | bytes, max_length: int) -> np.ndarray:
    """The UTF-8 bytes of ``text`` (first ``max_length``) as int64 ids 0..255."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data[:max_length], dtype=np.uint8).astype(np.int64)
