"""Small C kernels for CPU decoding, built on first use with the system C compiler and called through ctypes.

Batch-1 decoding on a CPU is a chain of tiny steps (a threshold, a selection, a few hundred row gathers) where
each PyTorch op costs 5-40 µs of dispatch on a small machine, more than the memory traffic it does. Spark's
decode steps (``sparse_ffn/spark_ffn_step.c``, ``spark_attention/decode_step.c``, with helpers from
``native_common.h``) therefore have a C version: plain C99 on raw fp32 pointers, no PyTorch headers, so a build
takes about a second.

- Built with ``$CC`` (default ``cc``), ``-O3``, plus ``-mavx2 -mfma`` when PyTorch reports an AVX2 or AVX-512
  CPU, and ``-fopenmp`` when the compiler takes it. The library then needs ``libgomp.so.1``; where PyTorch uses
  GNU OpenMP itself (its Linux wheels bundle that soname), the loader resolves it to PyTorch's copy, so the
  kernels run on PyTorch's warm threads (``torch.get_num_threads()``) instead of a second pool.
- The library lands in ``$SEQZOO_NATIVE_CACHE`` (default ``$XDG_CACHE_HOME/seqzoo/native`` or
  ``~/.cache/seqzoo/native``) under a name that hashes the sources and the command, written to a temporary
  file and renamed into place, so a concurrent or interrupted build never leaves a half-written library.
- ``SEQZOO_NATIVE=0`` turns the C kernels off; without a working compiler they are off too (one warning says
  why). Every caller then runs its PyTorch ops: the same numbers, more time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

ENV_SWITCH = "SEQZOO_NATIVE"
ENV_CACHE = "SEQZOO_NATIVE_CACHE"
_ROOT = Path(__file__).resolve().parent
COMMON_HEADER = "native_common.h"  # included by every kernel (seqzoo/kernels/native_common.h)
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False when ``SEQZOO_NATIVE=0`` (or ``false`` / ``off``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seqzoo" / "native"


def _command(source: Path, target: str, openmp: bool) -> list[str]:
    cc = shlex.split(os.environ.get("CC", "cc"))
    flags = ["-O3", "-std=c99", "-shared", "-fPIC", "-fno-strict-aliasing", f"-I{_ROOT}"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if openmp:
        flags.append("-fopenmp")
    return [*cc, *flags, "-o", target, str(source), "-lm"]


def library(relpath: str) -> ctypes.CDLL | None:
    """The shared library built from ``seqzoo/kernels/<relpath>`` (a ``.c`` file), or None when the C kernels
    are switched off or cannot be built. Built once per source and command, then loaded from the cache."""
    if not enabled():
        return None
    with _lock:
        if relpath in _loaded:
            return _loaded[relpath]
        _loaded[relpath] = lib = _build_and_load(_ROOT / relpath)
        return lib


def _build_and_load(source: Path) -> ctypes.CDLL | None:
    text = source.read_bytes() + _ROOT.joinpath(COMMON_HEADER).read_bytes()
    key = hashlib.sha256(text + "\0".join(_command(source, "OUT", True)).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                # with OpenMP if the compiler has it (the loops then use PyTorch's threads), else without
                for openmp in (True, False):
                    done = subprocess.run(_command(source, tmp, openmp), capture_output=True, text=True,
                                          timeout=300)
                    if done.returncode == 0:
                        break
                else:
                    raise RuntimeError(f"`{' '.join(done.args)}` failed:\n{done.stderr.strip()[-2000:]}")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            warnings.warn(f"seqzoo: the C kernel {source.name} could not be built ({err}); CPU decoding uses "
                          f"PyTorch ops instead (same results, slower). Set CC to a C compiler, or "
                          f"{ENV_SWITCH}=0 to silence this.", RuntimeWarning, stacklevel=3)
            return None
    return ctypes.CDLL(str(target))


def function(relpath: str, name: str, argtypes: list):
    """The C function ``name`` of :func:`library` ``(relpath)``, declared with ``argtypes`` and an ``int64``
    result (ctypes then converts Python ints, floats and data pointers without wrappers); None as for
    :func:`library`."""
    lib = library(relpath)
    if lib is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.restype, fn.argtypes = ctypes.c_int64, argtypes
    return fn
