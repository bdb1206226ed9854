"""Tasks: each builds its data (through ``datasets``, cached on disk), picks the model head and computes its
metrics. ``get_task(name, settings)`` builds one by name; ``python -m seqzoo.eval`` evaluates a checkpoint.

Registered tasks: ``mqar`` (Zoology's multi-query associative recall). A new task subclasses
:class:`seqzoo.eval.base.Task` and calls :func:`register_task`.
"""

from __future__ import annotations

from .base import IGNORE_INDEX, SETTINGS_FILE, Task, read_saved_settings
from .mqar import MQARSettings, MQARTask, multiquery_ar

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Register a Task subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task: expected a Task subclass, got {cls!r}")
    existing = _TASKS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"register_task: a task named {cls.name!r} is already registered ({existing.__name__})")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task_class(name: str, where: str = "task.name") -> type[Task]:
    from ..config import ConfigError

    if name not in _TASKS:
        raise ConfigError(f"{where}: unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def get_task(name: str, settings=None, cache_dir=None) -> Task:
    """Build task ``name`` with ``settings`` (a dict of its fields, its Settings dataclass, or None for the
    defaults). An unknown name raises an error listing the known ones."""
    return get_task_class(name)(settings, cache_dir=cache_dir)


register_task(MQARTask)

__all__ = ["IGNORE_INDEX", "SETTINGS_FILE", "Task", "MQARTask", "MQARSettings", "multiquery_ar", "get_task",
           "get_task_class", "list_tasks", "register_task", "read_saved_settings"]
