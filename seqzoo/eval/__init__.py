"""Tasks: each builds its data (through ``datasets``, cached on disk), names the head its model needs, owns the
model call on a batch (``Task.step``) and computes its metrics. ``get_task(name, settings)`` builds one by
name; ``python -m seqzoo.eval`` evaluates a checkpoint.

Registered tasks: ``mqar`` (Zoology's multi-query associative recall); ``enwik8`` and ``bytes_lm`` (byte-level
language modelling in bits per byte, :mod:`seqzoo.eval.lm`). Registered heads (:mod:`seqzoo.eval.heads`):
``causal-lm``, ``classification``; ``byte-lm`` (:mod:`seqzoo.eval.lm.task`). A new task subclasses
:class:`seqzoo.eval.base.Task` and calls :func:`register_task`; a new kind of model call subclasses
:class:`seqzoo.eval.heads.Head` and calls :func:`register_head` (see ``docs/training.md``, "Adding a task").

This package imports nothing from ``seqzoo.config`` or ``seqzoo.trainer`` (the config system imports the task
registry, not the other way round).
"""

from __future__ import annotations

from ..common import ConfigError, did_you_mean
from .base import IGNORE_INDEX, SETTINGS_FILE, StepOutput, Task, read_saved_settings
from .heads import Head, HeadOutput, get_head, list_heads, register_head
from .mqar import MQARSettings, MQARTask, multiquery_ar

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Register a Task subclass under ``cls.name`` (usable as a decorator). Its ``head`` must be registered."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task: expected a Task subclass, got {cls!r}")
    get_head(getattr(cls, "head", None), where=f"register_task: {cls.__name__}.head")
    existing = _TASKS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"register_task: a task named {cls.name!r} is already registered ({existing.__name__})")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task_class(name: str, where: str = "task.name") -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"{where}: unknown task {name!r}{did_you_mean(name, _TASKS)}; "
                          f"known tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def get_task(name: str, settings=None, cache_dir=None) -> Task:
    """Build task ``name`` with ``settings`` (a dict of its fields, its Settings dataclass, or None for the
    defaults). An unknown name raises an error listing the known ones."""
    return get_task_class(name)(settings, cache_dir=cache_dir)


register_task(MQARTask)

from . import lra  # noqa: E402,F401  (registers the LRA tasks and the lra-pair head, seqzoo/eval/lra/)

from .lm.task import BytesLMTask, Enwik8Task  # noqa: E402  (registers the byte-lm head)

register_task(Enwik8Task)
register_task(BytesLMTask)

__all__ = ["IGNORE_INDEX", "SETTINGS_FILE", "Head", "HeadOutput", "MQARSettings", "MQARTask", "StepOutput", "Task",
           "get_head", "get_task", "get_task_class", "list_heads", "list_tasks", "multiquery_ar", "read_saved_settings",
           "register_head", "register_task"]
