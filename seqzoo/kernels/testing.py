"""Helpers every op test uses: relative-error checks for outputs and gradients, and NaN-poisoned empties.

``rel_err(actual, expected)`` is ``||actual - expected||_2 / ||expected||_2`` computed in fp64, the measure
fla calls the error ratio. A kernel that leaves part of an output unwritten fails under :func:`nan_empty`,
which fills every ``torch.empty`` / ``empty_like`` / ``Tensor.new_empty`` with NaN while it is active.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative L2 error; NaN or inf anywhere in ``actual`` gives ``inf``."""
    if actual.shape != expected.shape:
        raise ValueError(f"rel_err: shapes differ, actual {list(actual.shape)} vs expected {list(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if not torch.isfinite(a).all():
        return math.inf
    denom = e.norm().item()
    num = (a - e).norm().item()
    if denom == 0.0:
        return num  # expected is exactly zero: report the absolute error
    return num / denom


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    err = rel_err(actual, expected)
    if not err <= tol:
        raise AssertionError(
            f"{name}: relative error {err:.3e} exceeds {tol:.1e} "
            f"(shape {list(expected.shape)}, max abs diff "
            f"{(actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max().item():.3e})"
        )


def forward_backward(
    fn: Callable[..., object],
    inputs: Mapping[str, torch.Tensor | None],
    grad_outputs: Sequence[torch.Tensor | None],
    **kwargs,
) -> tuple[list[torch.Tensor | None], dict[str, torch.Tensor | None]]:
    """Run ``fn(**inputs, **kwargs)`` on fresh leaf copies of ``inputs``, backpropagate ``grad_outputs``
    through its outputs (a tensor or a tuple; ``None`` entries are skipped) and return
    ``(outputs, grads_by_input_name)``. Integer inputs are passed through without gradients."""
    leaves = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            leaves[k] = v.detach().clone().requires_grad_(True)
        else:
            leaves[k] = v
    out = fn(**leaves, **kwargs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g.to(o.dtype) for o, g in pairs])
    grads = {k: (v.grad if isinstance(v, torch.Tensor) and v.requires_grad else None) for k, v in leaves.items()}
    return [o.detach() if isinstance(o, torch.Tensor) else o for o in outs], grads


def assert_all_close(
    label: str,
    outputs: Sequence[torch.Tensor | None],
    ref_outputs: Sequence[torch.Tensor | None],
    grads: Mapping[str, torch.Tensor | None],
    ref_grads: Mapping[str, torch.Tensor | None],
    tol: float,
    grad_tol: float | None = None,
) -> None:
    """Compare every output and every gradient that the reference produced."""
    grad_tol = tol if grad_tol is None else grad_tol
    for i, (o, r) in enumerate(zip(outputs, ref_outputs)):
        if r is None:
            continue
        if o is None:
            raise AssertionError(f"{label}: output {i} is None but the reference returned a tensor")
        assert_close(f"{label} output[{i}]", o, r, tol)
    for k, r in ref_grads.items():
        if r is None:
            continue
        g = grads.get(k)
        if g is None:
            raise AssertionError(f"{label}: no gradient for {k!r} but the reference has one")
        assert_close(f"{label} grad[{k}]", g, r, grad_tol)


@contextlib.contextmanager
def nan_empty():
    """Fill floating tensors from ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` with NaN
    (integer ones with the dtype's maximum) for the duration of the block."""
    orig_empty, orig_empty_like, orig_new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            elif t.dtype != torch.bool and t.numel() > 0:
                t.fill_(torch.iinfo(t.dtype).max)
        return t

    def empty(*args, **kwargs):
        return poison(orig_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison(orig_empty_like(*args, **kwargs))

    def new_empty(self, *args, **kwargs):
        return poison(orig_new_empty(self, *args, **kwargs))

    torch.empty, torch.empty_like, torch.Tensor.new_empty = empty, empty_like, new_empty
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = orig_empty, orig_empty_like, orig_new_empty


@contextlib.contextmanager
def autotune_trial_runs():
    """Make every ``triton.autotune``-wrapped launch behave, once per tuning key, as autotuning on a GPU does:
    the kernel first runs as a timing trial (with the autotuner's own ``reset_to_zero`` / ``restore_value``
    hooks around it), then for real. A kernel that reads an output it also writes (``dk += ...`` in place)
    and does not name it in ``restore_value`` then gives a wrong answer here, as it would on a GPU, where
    each config is timed many times on the real buffers. The interpreter keeps one config and so never
    times one, which is why this check is needed on a CPU."""
    from triton.runtime.autotuner import Autotuner

    orig_run = Autotuner.run
    tried: set = set()

    def run(self, *args, **kwargs):
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        key = (id(self),) + tuple(repr(named.get(k)) for k in self.keys) + tuple(
            str(v.dtype) for v in named.values() if isinstance(v, torch.Tensor))
        if key not in tried:
            tried.add(key)
            config = self.configs[0]
            full = {**named, **config.all_kwargs()}
            if config.pre_hook is not None:
                config.pre_hook(full)
            self.pre_hook(full)
            self.fn.run(*args, **kwargs, **config.all_kwargs())
            self.post_hook(full, exception=None)
            self.pre_hook(full, reset_only=True)
        return orig_run(self, *args, **kwargs)

    Autotuner.run = run
    try:
        yield
    finally:
        Autotuner.run = orig_run


def record_taken(monkeypatch, module, name: str) -> list[bool]:
    """Wrap ``module.<name>``, a fast path that returns None when it declines its inputs (the C decode kernels),
    for the rest of a test: the list returned gets one entry per call, True where the fast path did the work.
    A test asserts on it, so that a fast path that silently stopped running does not pass on its fallback."""
    inner, taken = getattr(module, name), []

    def recorded(*args, **kwargs):
        out = inner(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(module, name, recorded)
    return taken
