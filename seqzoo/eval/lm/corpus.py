"""Byte corpora on disk: enwik8 (raw file or zip), any text file or folder of text files; one memory-mapped
``uint8`` array per corpus and its train / valid / test byte ranges.

Why a memmap: enwik8 is 10^8 bytes; as a Python list it would need ~3.5 GB, as a numpy array read into memory
100 MB per process. A memmap costs nothing until a window is read, and every process of a data-parallel run
shares the same pages through the OS cache (nanoGPT's ``np.memmap`` habit).

Where the bytes come from:

- a plain file (``enwik8`` itself, or one text file) is mapped in place; nothing is copied;
- ``enwik8.zip`` is extracted once, a folder of text files is concatenated once, into the cache folder
  (``<cache_dir>/<name>-<fingerprint>.bytes``). The file is written under a temporary name, flushed, checked
  (size; the zip member's CRC-32) and renamed into place, so a reader never maps a half-written file and a
  corrupt or missing source leaves nothing behind. The fingerprint covers the source path, the names, sizes and
  modification times of the files read, so an edited corpus is read again instead of served stale.

The bytes are read raw: no text decoding and no newline translation (a text loader would turn ``\\r\\n`` into
``\\n`` and change what is scored).

Every problem with the source is a :class:`~seqzoo.common.ConfigError` that names the setting
(``task.path``), the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ...common import ConfigError

SPLITS = ("train", "valid", "test")

# the first 10^8 bytes of the English Wikipedia dump of 2006-03-03 (Hutter prize); the standard split is the
# first 90M bytes for training, the next 5M for validation, the last 5M for test (Transformer-XL, MEGA)
ENWIK8_SIZE = 100_000_000
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
ENWIK8_MEMBER = "enwik8"

_COPY_CHUNK = 1 << 22  # 4 MiB: extraction and concatenation stream in pieces of this size


@dataclasses.dataclass(frozen=True)
class ByteCorpus:
    """A corpus as one memory-mapped byte array and the half-open byte ranges of its splits.

    The splits are contiguous and in file order (train, then valid, then test), so the bytes just before a split
    are the end of the one before it: evaluation uses them as (unscored) context for the split's first bytes.
    """

    data: np.ndarray  # uint8 [N], a read-only np.memmap
    bounds: dict  # {"train": (lo, hi), "valid": (lo, hi), "test": (lo, hi)}
    source: str  # what was read, for messages and run files

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def split_range(self, split: str) -> tuple[int, int]:
        if split not in self.bounds:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        return self.bounds[split]

    def split_bytes(self, split: str) -> np.ndarray:
        """The bytes of ``split`` (a view of the memmap: nothing is read until it is used)."""
        lo, hi = self.split_range(split)
        return self.data[lo:hi]


# --------------------------------------------------------------------------------------------------------------
# split arithmetic
# --------------------------------------------------------------------------------------------------------------


def fraction_split(n: int, valid_fraction: float, test_fraction: float, where: str = "task") -> dict:
    """Byte ranges for a corpus of ``n`` bytes cut in file order: ``round(n * valid_fraction)`` valid bytes and
    ``round(n * test_fraction)`` test bytes at the end, the rest for training.

    ``round`` rather than ``int``: ``int(100 * 0.29)`` is 28 because ``100 * 0.29 == 28.999999999999996``."""
    for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise ConfigError(f"{where}.{name}: expected a fraction in (0, 1), got {f!r}")
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError(f"{where}.valid_fraction + {where}.test_fraction: expected < 1 (something must be left "
                          f"for training), got {valid_fraction} + {test_fraction}")
    n_valid, n_test = round(n * valid_fraction), round(n * test_fraction)
    n_train = n - n_valid - n_test
    return {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}


def check_split_sizes(bounds: dict, *, min_train: int, source: str, where: str = "task") -> None:
    """Every split must hold bytes to score, and the train split at least one training window."""
    sizes = {k: hi - lo for k, (lo, hi) in bounds.items()}
    if sizes["train"] < min_train:
        raise ConfigError(f"{where}.path: {source} gives {sizes['train']} training bytes; expected at least "
                          f"{min_train} (one window of seq_len + 1 bytes): use a larger corpus, smaller "
                          f"valid/test fractions or a shorter {where}.seq_len")
    for split in ("valid", "test"):
        if sizes[split] < 1:
            raise ConfigError(f"{where}.{split}_fraction: {source} has {sum(sizes.values())} bytes, which leaves "
                              f"the {split} split empty; expected a larger fraction or a larger corpus")


# --------------------------------------------------------------------------------------------------------------
# reading sources
# --------------------------------------------------------------------------------------------------------------


def _missing(path: Path, where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {str(path)!r} does not exist; expected {what}")


def _memmap(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r")


def _fingerprint(items: list) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def _stat_entry(path: Path, base: Path | None = None) -> list:
    st = path.stat()
    name = str(path.relative_to(base)) if base is not None else str(path.resolve())
    return [name, st.st_size, st.st_mtime_ns]


def _write_atomically(target: Path, fill, expected_size: int | None, where: str, source: str) -> None:
    """Create ``target`` through ``fill(fileobj) -> bytes written`` into a temporary file in the same folder,
    checked (size), flushed and renamed into place. On any error the temporary file is removed and ``target``
    is left as it was (absent)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            written = fill(f)
            f.flush()
            os.fsync(f.fileno())
        if expected_size is not None and written != expected_size:
            raise ConfigError(f"{where}: {source} gave {written} bytes, expected {expected_size}; the file is "
                              f"truncated or not the expected corpus")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # a concurrent writer of the same content may win the race: same bytes
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _extract_member(zip_path: Path, member: str, target: Path, expected_size: int | None, where: str) -> None:
    def fill(f) -> int:
        written = 0
        try:
            with zipfile.ZipFile(zip_path) as zf, zf.open(member) as src:
                while chunk := src.read(_COPY_CHUNK):  # ZipExtFile checks the CRC-32 at the end of the member
                    f.write(chunk)
                    written += len(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as e:
            raise ConfigError(f"{where}: {str(zip_path)!r} is corrupt: reading {member!r} failed "
                              f"({type(e).__name__}: {e}); download it again") from None
        return written

    _write_atomically(target, fill, expected_size, where, f"{str(zip_path)!r} ({member})")


def _zip_member(zip_path: Path, preferred: str | None, where: str) -> tuple[str, int]:
    """The member to read (``preferred`` if present, else the only file) and its size, from the central
    directory (nothing is decompressed here)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{where}: {str(zip_path)!r} is not a readable zip archive ({e})") from None
    names = [i.filename for i in infos]
    for info in infos:
        if preferred is not None and info.filename == preferred:
            return info.filename, info.file_size
    if len(infos) == 1 and preferred is None:
        return infos[0].filename, infos[0].file_size
    want = f"a member named {preferred!r}" if preferred else "exactly one file"
    raise ConfigError(f"{where}: {str(zip_path)!r} holds {names}; expected {want}")


HUB_PREFIX = "hub:"
HUB_ENWIK8 = "LTCB/enwik8"  # the Hugging Face dataset: splits train / validation / test, a "text" column
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def open_hub_text(repo: str, cache_dir: str | os.PathLike, where: str = "task.path", *, name: str | None = None,
                  column: str = "text", separator: bytes = b"\n") -> ByteCorpus:
    """A corpus from a Hugging Face dataset with train / validation / test splits and a text column, read once
    through ``datasets`` (online, or from its local cache) and written to one byte file in the cache (rows
    joined by ``separator``, UTF-8; the splits kept as the dataset gives them)."""
    target = Path(cache_dir) / f"hub-{_fingerprint(['hub', repo, name, column])}.bytes"
    meta = target.with_suffix(".json")
    if not (target.is_file() and meta.is_file()):
        try:
            import datasets

            ds = datasets.load_dataset(repo, name)
        except Exception as e:  # offline, unknown repository, ...
            raise ConfigError(f"{where}: cannot load the hub dataset {repo!r} ({type(e).__name__}: {e}); give a "
                              f"local file instead (for enwik8: the enwik8 file or enwik8.zip from "
                              f"http://mattmahoney.net/dc/enwik8.zip)") from None
        missing = [s for s in HUB_SPLITS.values() if s not in ds]
        if missing or any(column not in ds[s].column_names for s in HUB_SPLITS.values()):
            raise ConfigError(f"{where}: the hub dataset {repo!r} needs splits {list(HUB_SPLITS.values())} with a "
                              f"{column!r} column; it has {dict((k, ds[k].column_names) for k in ds)}")
        sizes = {}

        def fill(f) -> int:
            total = 0
            for ours, theirs in HUB_SPLITS.items():
                start = total
                for row in ds[theirs]:
                    data = str(row[column]).encode("utf-8") + separator
                    f.write(data)
                    total += len(data)
                sizes[ours] = (start, total)
            return total

        _write_atomically(target, fill, None, where, f"the hub dataset {repo!r}")
        meta.write_text(json.dumps(sizes))
    bounds = {k: tuple(v) for k, v in json.loads(meta.read_text()).items()}
    return ByteCorpus(data=_memmap(target), bounds=bounds, source=f"hub dataset {repo} ({target})")


def open_enwik8(path: str | os.PathLike, cache_dir: str | os.PathLike, where: str = "task.path") -> ByteCorpus:
    """enwik8 from ``path``: the raw 10^8-byte file, ``enwik8.zip``, or a folder holding either, with the standard
    split: bytes [0, 90M) train, [90M, 95M) valid, [95M, 100M) test. ``hub`` (or ``hub:REPO``) reads the Hugging
    Face dataset (default ``LTCB/enwik8``) through ``datasets`` instead, with the dataset's own splits."""
    if str(path) == "hub" or str(path).startswith(HUB_PREFIX):
        repo = str(path)[len(HUB_PREFIX):] if str(path).startswith(HUB_PREFIX) else ""
        return open_hub_text(repo or HUB_ENWIK8, cache_dir, where)
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("enwik8", "enwik8.zip"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise ConfigError(f"{where}: the folder {str(path)!r} holds neither 'enwik8' nor 'enwik8.zip'; expected "
                              f"the enwik8 file, enwik8.zip (http://mattmahoney.net/dc/enwik8.zip) or a folder "
                              f"holding one")
    if not p.exists():
        raise _missing(p, where, "the enwik8 file or enwik8.zip (http://mattmahoney.net/dc/enwik8.zip)")
    if not p.is_file():
        raise ConfigError(f"{where}: {str(p)!r} is not a regular file")
    if zipfile.is_zipfile(p):
        member, size = _zip_member(p, ENWIK8_MEMBER, where)
        if size != ENWIK8_SIZE:
            raise ConfigError(f"{where}: {str(p)!r} member {member!r} has {size} bytes; expected enwik8's "
                              f"{ENWIK8_SIZE}")
        target = Path(cache_dir) / f"enwik8-{_fingerprint(['zip', _stat_entry(p), member])}.bytes"
        if not (target.is_file() and target.stat().st_size == ENWIK8_SIZE):
            _extract_member(p, member, target, ENWIK8_SIZE, where)
        data = _memmap(target)
        source = f"{p} ({member}, extracted to {target})"
    else:
        size = p.stat().st_size
        if size != ENWIK8_SIZE:
            raise ConfigError(f"{where}: {str(p)!r} has {size} bytes; expected enwik8's {ENWIK8_SIZE} (the first "
                              f"10^8 bytes of the 2006 Wikipedia dump), or enwik8.zip")
        data = _memmap(p)
        source = str(p)
    a, b, _ = ENWIK8_SPLIT
    return ByteCorpus(data=data, bounds={"train": (0, a), "valid": (a, a + b), "test": (a + b, ENWIK8_SIZE)},
                      source=source)


def list_text_files(folder: Path, pattern: str) -> list[Path]:
    """Regular files under ``folder`` matching ``pattern`` (a glob relative to the folder, ``**`` recursive),
    in sorted order of their relative paths; hidden files and folders (a name starting with '.') are skipped."""
    out = []
    for f in folder.glob(pattern):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        out.append(f)
    return sorted(out, key=lambda f: f.relative_to(folder).as_posix())


def open_byte_corpus(path: str | os.PathLike, cache_dir: str | os.PathLike, *, pattern: str = "**/*",
                     separator: str = "\n", valid_fraction: float = 0.05, test_fraction: float = 0.05,
                     where: str = "task") -> ByteCorpus:
    """Any corpus: one file (mapped in place) or a folder of files matching ``pattern``, concatenated in sorted
    path order with ``separator`` (UTF-8) after each file; split by fraction in file order
    (:func:`fraction_split`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise _missing(p, f"{where}.path", "a text file or a folder of text files")
    if p.is_file():
        if p.stat().st_size == 0:
            raise ConfigError(f"{where}.path: {str(p)!r} is empty; expected a file with text in it")
        data = _memmap(p)
        source = str(p)
    elif p.is_dir():
        files = list_text_files(p, pattern)
        if not files:
            raise ConfigError(f"{where}.path: the folder {str(p)!r} has no files matching {where}.pattern "
                              f"{pattern!r} (hidden files are skipped)")
        sep = separator.encode("utf-8")
        entries = [_stat_entry(f, p) for f in files]
        total = sum(e[1] for e in entries) + len(sep) * len(files)
        if total == 0:
            raise ConfigError(f"{where}.path: the {len(files)} files matching {pattern!r} in {str(p)!r} are empty")
        key = _fingerprint(["folder", str(p.resolve()), pattern, separator, entries])
        target = Path(cache_dir) / f"bytes_lm-{p.name or 'root'}-{key}.bytes"

        def fill(f) -> int:
            written = 0
            for src in files:
                try:
                    with open(src, "rb") as g:
                        while chunk := g.read(_COPY_CHUNK):
                            f.write(chunk)
                            written += len(chunk)
                except OSError as e:
                    raise ConfigError(f"{where}.path: cannot read {str(src)!r} ({e})") from None
                f.write(sep)
                written += len(sep)
            return written

        if not (target.is_file() and target.stat().st_size == total):
            # a file that changed while being read changes the size: the check in _write_atomically catches it
            _write_atomically(target, fill, total, f"{where}.path", f"the files of {str(p)!r}")
        data = _memmap(target)
        source = f"{p} ({len(files)} files matching {pattern!r}, concatenated to {target})"
    else:
        raise ConfigError(f"{where}.path: {str(p)!r} is neither a regular file nor a folder")
    bounds = fraction_split(len(data), valid_fraction, test_fraction, where)
    return ByteCorpus(data=data, bounds=bounds, source=source)
