"""Shared pieces of the kernel benchmarks: timing, roofline floors and table printing.

Each benchmark is a module ``seqzoo.bench.<op>`` with ``add_arguments(parser)`` and ``run(args) -> list[dict]``;
``python -m seqzoo.bench <op>`` finds it by name. A row is a dict with at least ``impl``, ``shape``,
``pass`` ("fwd" / "fwd+bwd") and ``ms``; :func:`finish_row` adds tokens/s, TFLOP/s, GB/s and the fraction
of the roofline floor from ``flops`` and ``bytes`` when the row gives them.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Callable

import torch

# Peak numbers used for the roofline floor, (bf16 dense TFLOP/s, HBM TB/s). Measured ceilings on our H200
# are in shared/anchors (copy 4.27 TB/s, 8192^3 bf16 matmul ~675 TFLOP/s); datasheet values otherwise.
PEAKS = {
    "H200": (675.0, 4.27),
    "H100": (675.0, 3.0),
    "A100": (312.0, 1.9),
}


def device_peaks(device: torch.device) -> tuple[float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None


# Set by ``python -m seqzoo.bench OP --jsonl PATH [--smoke]`` (see __main__.py).
SMOKE = False  # one call per timing, for a CPU dry run of the command lines
LAST_FIRST_CALL_S = float("nan")  # seconds of the first call of the last timed function (compile + autotune)
_SINK: dict = {}  # {"path", "op", "device"} when rows stream to a JSON-lines file
_EMITTED: set = set()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call(fn: Callable[[], object], device: torch.device) -> float:
    """Run ``fn`` once and return its wall seconds (for a new shape: Triton compile + autotune + one run)."""
    global LAST_FIRST_CALL_S
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    LAST_FIRST_CALL_S = time.perf_counter() - t0
    return LAST_FIRST_CALL_S


def set_sink(path: str | None, op: str, device: torch.device) -> None:
    _SINK.clear()
    if path:
        _SINK.update(path=path, op=op, device=device)


def _append_jsonl(record: dict) -> None:
    if not _SINK:
        return
    with open(_SINK["path"], "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def emit(row: dict) -> dict:
    """Write a finished row to the JSON-lines sink now (a bench killed later keeps it). Idempotent per row."""
    if _SINK and id(row) not in _EMITTED:
        finish_row(row, _SINK["device"])
        _EMITTED.add(id(row))
        _append_jsonl({"op": _SINK["op"], "kind": "row", **row})
    return row


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 50, rep_ms: float = 200,
            min_reps: int = 3) -> float:
    """Median milliseconds per call. CUDA: ``triton.testing.do_bench`` (flushes L2, syncs); CPU: wall clock.
    The first call is timed on its own (``LAST_FIRST_CALL_S``: compile + autotune for a new shape) and, with a
    sink, recorded as a ``timing`` line so that a bench killed mid-way leaves its measurements."""
    first = first_call(fn, device)
    if SMOKE:
        return first * 1000.0
    ms = _time(fn, device, warmup_ms, rep_ms, min_reps)
    _append_jsonl({"op": _SINK.get("op"), "kind": "timing", "ms": ms, "first call s": first})
    return ms


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pass_callable(fwd: Callable[[], torch.Tensor], inputs, backward: bool) -> tuple[Callable[[], object], str]:
    """What a bench times for one pass: ``fwd()`` under ``no_grad``, or ``fwd()`` and the gradients of
    ``inputs`` for a fixed random output gradient. Returns ``(callable, "")``, the shape of a bench's make-call."""
    if not backward:
        def run_fwd():
            with torch.no_grad():
                return fwd()
        return run_fwd, ""
    dy = torch.randn_like(fwd())

    def run_bwd():
        return torch.autograd.grad(fwd(), inputs, dy)

    return run_bwd, ""


def copy_row(x: torch.Tensor, shape: str) -> dict:
    """The bandwidth ceiling the same run measures: ``y.copy_(x)`` over a tensor the size of an op's input
    (one read and one write), emitted as a row named ``copy`` for a memory-bound op to be compared with."""
    y = torch.empty_like(x)
    ms = time_fn(lambda: y.copy_(x), x.device)
    return emit(dict(impl="copy (ceiling)", shape=shape, **{"pass": "fwd"}, ms=ms,
                     bytes=2 * x.numel() * x.element_size(), **{"first call s": LAST_FIRST_CALL_S}))


def _time(fn, device, warmup_ms, rep_ms, min_reps) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    times = []
    budget = rep_ms / 1000.0
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) < budget:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def finish_row(row: dict, device: torch.device) -> dict:
    ms = row["ms"]
    tokens = row.get("tokens")
    if tokens:
        row["tok/s"] = tokens / (ms / 1000.0)
    flops, nbytes = row.get("flops"), row.get("bytes")
    if flops:
        row["TFLOP/s"] = flops / (ms / 1000.0) / 1e12
    if nbytes:
        row["GB/s"] = nbytes / (ms / 1000.0) / 1e9
    peaks = device_peaks(device)
    if peaks and (flops or nbytes):
        floor_ms = max((flops or 0) / (peaks[0] * 1e12), (nbytes or 0) / (peaks[1] * 1e12)) * 1000.0
        row["floor ms"] = floor_ms
        row["% roofline"] = 100.0 * floor_ms / ms
    return row


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v >= 1e6:
            return f"{v:.3g}"
        if v >= 100:
            return f"{v:.0f}"
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)


COLUMNS = ["impl", "shape", "pass", "ms", "tok/s", "TFLOP/s", "GB/s", "floor ms", "% roofline", "first call s",
           "note"]


def print_table(title: str, rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def environment(device: torch.device) -> dict:
    import platform

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            env["triton"] = triton.__version__
        except Exception:
            pass
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    return env
