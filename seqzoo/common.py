"""Small pieces that several parts of seqzoo share (the config system, the architectures, the tasks, the
trainer and the eval CLI): the config error and its "did you mean", atomic file writes, quiet third-party
progress bars, the precision choice, and "a run folder -> its ``final/`` model". This module imports nothing
from seqzoo (and torch / transformers / datasets only inside the functions that need them), so any module may
import it.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key, the value and what was expected."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name_error(where: str, what: str, name, valid: Iterable[str]) -> ConfigError:
    """``{where}: unknown {what} 'name' (did you mean ...?); valid: a, b, c``."""
    valid = sorted(str(v) for v in valid)
    return ConfigError(f"{where}: unknown {what} {name!r}{did_you_mean(name, valid)}; valid: {', '.join(valid)}")


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so a reader never
    sees a half-written file. The file gets ``mode`` (mkstemp's temporary files are 0600); a missing parent
    folder is created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------------------
# quiet third-party progress bars
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence the progress bars of transformers ("Writing model shards", "Loading weights") and datasets
    ("Saving the dataset") inside the block: our models are one file and our generated sets small, so the bars
    only add noise around seqzoo's own output. Each library's previous setting is restored on exit."""
    restore = []
    for module in ("transformers.utils.logging", "datasets.utils.logging"):
        try:
            lib = importlib.import_module(module)
        except ImportError:  # pragma: no cover (both are dependencies)
            continue
        if lib.is_progress_bar_enabled():
            lib.disable_progress_bar()
            restore.append(lib)
    try:
        yield
    finally:
        for lib in restore:
            lib.enable_progress_bar()


# --------------------------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device_type: str) -> str:
    """The precision a run uses on ``device_type`` ("cpu", "cuda", ...): ``auto`` is bf16 autocast on a CUDA
    device that supports it and fp32 everywhere else (CPU autocast is slower than fp32 for our small models);
    ``fp32``, ``bf16``, ``fp16`` are taken as given. The trainer and the eval CLI both choose through this."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
    return "fp32"


def autocast_dtype(precision: str):
    """The torch dtype to autocast to for a resolved precision (None for fp32: no autocast)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# --------------------------------------------------------------------------------------------------------------
# run folder -> model folder
# --------------------------------------------------------------------------------------------------------------


def resolve_model_dir(path: str | os.PathLike, where: str) -> Path:
    """The ``save_pretrained`` folder that ``path`` names: ``path`` itself when it holds a ``config.json``, else
    its ``final/`` when that does (a run's output_dir). Errors are :class:`ConfigError` naming ``where`` (the
    config key or flag the path came from)."""
    p = Path(path)
    if not p.is_dir():
        reason = "it does not exist" if not p.exists() else "it is a file"
        raise ConfigError(f"{where}: {str(path)!r} is not a directory: {reason}")
    if not (p / "config.json").is_file() and (p / "final" / "config.json").is_file():
        p = p / "final"
    if not (p / "config.json").is_file():
        raise ConfigError(f"{where}: {str(path)!r} has no config.json; expected a directory written by "
                          f"save_pretrained (e.g. a run's output_dir/final) or a run's output_dir")
    return p


_STAGING = contextvars.ContextVar("seqzoo_staging", default=False)
_WEIGHT_PREFIXES = ("model.safetensors", "model-", "pytorch_model")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike):
    """Write a checkpoint folder so that a failed save never leaves a half-written one.

    Yields a temporary folder beside ``target``; everything is written there. On success: when ``target`` does
    not exist, the temporary folder is renamed to it (it appears complete, at once); when it exists, stale
    weight files are removed and the new files are moved in by rename, ``config.json`` last, so the folder
    never holds a partly written file. On failure the temporary folder is removed and ``target`` is left as it
    was (the old checkpoint, or nothing). Nested calls (the model's save writing its config) write straight
    into the outer call's folder.
    """
    target = os.path.abspath(os.fspath(target))
    if _STAGING.get():
        os.makedirs(target, exist_ok=True)
        yield target
        return
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial-")
    token = _STAGING.set(True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _STAGING.reset(token)
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the folder and its files the usual modes
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)
    if not os.path.exists(target):
        os.replace(tmp, target)
        return
    new = os.listdir(tmp)
    if any(n.startswith(_WEIGHT_PREFIXES) for n in new):  # weights saved in another layout must not linger
        for old in os.listdir(target):
            if old.startswith(_WEIGHT_PREFIXES) and old not in new:
                os.unlink(os.path.join(target, old))
    for n in sorted(new, key=lambda n: n == "config.json"):
        src, dst = os.path.join(tmp, n), os.path.join(target, n)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
    os.rmdir(tmp)
