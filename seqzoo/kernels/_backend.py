"""Backend choice, input checks shared by every op, and small Triton helpers.

Every public op in :mod:`seqzoo.kernels` takes ``backend="auto" | "triton" | "torch" | "reference"``:

- ``"triton"``    the fused Triton kernels. Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1``
                  set before Triton is imported (that is how CI runs every Triton kernel).
- ``"torch"``     the pure-PyTorch path (chunked for the recurrent ops): the CPU path, differentiable.
- ``"reference"`` the step-by-step fp32 recurrence: slow, readable, the ground truth.
- ``"auto"``      ``SEQZOO_BACKEND`` if set, else ``"triton"`` for CUDA tensors when Triton imports, else
                  ``"torch"``.

Nothing here imports Triton at module import time: ``import seqzoo`` stays cheap and works without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Iterable, Sequence

import torch

BACKENDS = ("auto", "triton", "torch", "reference")
ENV_BACKEND = "SEQZOO_BACKEND"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------
# Backend resolution
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton can be imported (it is a Linux-only dependency)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - broken installs
        return False
    return True


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device | str, op: str) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into the backend that will run, or raise a clear error."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        forced = os.environ.get(ENV_BACKEND, "").strip()
        if forced:
            if forced not in BACKENDS or forced == "auto":
                raise ValueError(
                    f"{op}: environment variable {ENV_BACKEND} must be one of "
                    f"{BACKENDS[1:]}, got {forced!r}"
                )
            backend = forced
        else:
            backend = "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the 'triton' package, which is not importable")
        if device.type != "cuda" and not interpreter_active():
            raise ValueError(
                f"{op}: backend='triton' needs CUDA tensors (got tensors on {device}); set TRITON_INTERPRET=1 "
                "before importing triton to run the kernels on CPU, or use backend='torch'"
            )
    return backend


# ----------------------------------------------------------------------------------------------
# Input checks: each raises ValueError / TypeError naming the argument, what it got and what was expected
# ----------------------------------------------------------------------------------------------


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Iterable[torch.dtype] | None = FLOAT_DTYPES,
    layout: str | None = None,
) -> torch.Tensor:
    """Check one tensor argument; ``shape`` may use ``None`` for "any size"; ``layout`` names the dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected one of {dtypes}")
    expected_ndim = len(shape) if shape is not None else ndim
    if expected_ndim is not None and t.dim() != expected_ndim:
        what = layout or (_fmt_shape(shape) if shape is not None else f"{expected_ndim} dims")
        raise ValueError(f"{op}: {name} must have {expected_ndim} dims {what}, got shape {list(t.shape)}")
    if shape is not None:
        for got, want in zip(t.shape, shape):
            if want is not None and got != want:
                what = f" {layout}" if layout else ""
                raise ValueError(
                    f"{op}: {name} has shape {list(t.shape)}, expected {_fmt_shape(shape)}{what}"
                )
    return t


def check_same_device(op: str, **tensors) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first = next(iter(devices.values()))
    for k, d in devices.items():
        if d != first:
            raise ValueError(f"{op}: all inputs must be on one device, got {k} on {d} and others on {first}")
    return first


def check_same_dtype(op: str, **tensors) -> torch.dtype:
    present = {k: v for k, v in tensors.items() if v is not None}
    dts = {k: v.dtype for k, v in present.items()}
    first_name, first = next(iter(dts.items()))
    for k, d in dts.items():
        if d != first:
            raise TypeError(f"{op}: {k} has dtype {d} but {first_name} has {first}; pass one dtype")
    return first


def check_cu_seqlens(op: str, cu_seqlens, batch: int, seq_len: int, cu_seqlens_cpu=None) -> torch.Tensor | None:
    """Validate packed-sequence offsets: 1-D int, starts at 0, ends at T, non-decreasing, and batch == 1.

    The values are checked on a host copy: ``cu_seqlens_cpu`` when given (then nothing synchronizes; it
    must hold the same offsets as ``cu_seqlens``), else one device->host copy. Returns ``cu_seqlens``;
    :func:`check_varlen` returns the host copy for the caller to reuse."""
    check_varlen(op, cu_seqlens, batch, seq_len, cu_seqlens_cpu)
    return cu_seqlens


def check_varlen(op: str, cu_seqlens, batch: int, seq_len: int, cu_seqlens_cpu=None) -> torch.Tensor | None:
    """:func:`check_cu_seqlens` returning the validated host copy of the offsets (None for dense inputs)."""
    if cu_seqlens is None:
        if cu_seqlens_cpu is not None:
            raise ValueError(f"{op}: cu_seqlens_cpu was given without cu_seqlens; pass both or neither")
        return None
    check_tensor(op, "cu_seqlens", cu_seqlens, ndim=1, dtypes=INDEX_DTYPES)
    if batch != 1:
        raise ValueError(
            f"{op}: cu_seqlens packs sequences along T and needs batch size 1, got batch size {batch}"
        )
    if cu_seqlens_cpu is not None:
        check_tensor(op, "cu_seqlens_cpu", cu_seqlens_cpu, ndim=1, dtypes=INDEX_DTYPES)
        if cu_seqlens_cpu.device.type != "cpu":
            raise ValueError(f"{op}: cu_seqlens_cpu must be a CPU tensor (the host copy), got one on "
                             f"{cu_seqlens_cpu.device}")
        if cu_seqlens_cpu.shape != cu_seqlens.shape:
            raise ValueError(f"{op}: cu_seqlens_cpu has shape {list(cu_seqlens_cpu.shape)} but cu_seqlens has "
                             f"{list(cu_seqlens.shape)}; it must be a host copy of cu_seqlens")
        cpu = cu_seqlens_cpu
    else:
        cpu = cu_seqlens.detach().cpu()
    if cpu.numel() < 2:
        raise ValueError(f"{op}: cu_seqlens needs at least 2 entries [0, ..., T], got {cpu.tolist()}")
    if int(cpu[0]) != 0 or int(cpu[-1]) != seq_len:
        raise ValueError(
            f"{op}: cu_seqlens must start at 0 and end at T={seq_len}, got first={int(cpu[0])}, last={int(cpu[-1])}"
        )
    if bool((cpu[1:] < cpu[:-1]).any()):
        raise ValueError(f"{op}: cu_seqlens must be non-decreasing, got {cpu.tolist()}")
    return cpu


def num_sequences(batch: int, cu_seqlens) -> int:
    """N, the leading dim of initial/final states: B, or the number of packed sequences."""
    return batch if cu_seqlens is None else cu_seqlens.numel() - 1


def check_choice(op: str, name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Triton helpers (import Triton lazily, inside the functions)
# ----------------------------------------------------------------------------------------------


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def autotune_configs(grid: dict[str, Sequence[int]], num_warps: Sequence[int], num_stages: Sequence[int],
                     *, skip=None):
    """A small product of ``triton.Config``s. Under the interpreter only the first one is returned, since
    timing configs there is meaningless and slow. Keep grids tiny: compile time is a user cost.
    ``skip(meta, num_warps, num_stages) -> bool`` drops configs (e.g. ones the compile report shows spilling)."""
    import itertools

    import triton

    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        for w in num_warps:
            for s in num_stages:
                meta = dict(zip(keys, values))
                if skip is not None and skip(meta, w, s):
                    continue
                configs.append(triton.Config(meta, num_warps=w, num_stages=s))
    if interpreter_active():
        configs = configs[:1]
    return configs


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def hopper_prune(allowed_warps: Sequence[int]):
    """An ``early_config_prune`` for ``triton.autotune(prune_configs_by=...)``: on sm_90 (H100/H200) keep only
    the configs with ``num_warps`` in ``allowed_warps`` (patterns Triton 3.6-3.7 miscompiles there; see the
    kernel READMEs). Other GPUs keep every config. ``prune.hopper_warps`` tells the compile report."""
    allowed = tuple(allowed_warps)

    def prune(configs, nargs, **kwargs):
        dev = next((t.device for t in nargs.values() if isinstance(t, torch.Tensor) and t.is_cuda), None)
        if dev is None or _capability(dev.index if dev.index is not None else 0)[0] != 9:
            return configs
        kept = [c for c in configs if c.num_warps in allowed]
        return kept or configs

    prune.hopper_warps = allowed
    return prune
