"""Small pieces that several parts of seqzoo share (the config system, the architectures, the tasks, the
trainer and the eval CLI). This module imports nothing from seqzoo, so any module may import it.
"""

from __future__ import annotations

import difflib
import os
import tempfile
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
    sees a half-written file. The file gets ``mode`` (mkstemp's temporary files are 0600)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
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
