"""What each task means, independent of the model: targets, loss, post-processing, metrics.

:func:`get_task` gives the :class:`~.base.Task` a model card names in ``kind``; the engine asks it
and never compares task names. The three built-in tasks register themselves on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import IGNORE, UNANNOTATED, Metric, Segmentation, Targets, Task, object_table

if TYPE_CHECKING:
    from ..card import ModelCard

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register a task instance under ``task.name``.

    Raises:
        ValueError: a task of that name is registered already.
    """
    if task.name in _TASKS:
        raise ValueError(f"A task named {task.name!r} is already registered.")
    _TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a registered task (for tests and plugins that register tasks temporarily)."""
    _TASKS.pop(name, None)


def get_task(name: str) -> Task:
    """The task registered as ``name``.

    Raises:
        KeyError: no such task; the message lists the registered ones.
    """
    _load_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"No task named {name!r}. Registered tasks: {', '.join(sorted(_TASKS))}.") from None


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def score_of(card: ModelCard) -> tuple[str, float] | None:
    """The task's validation score recorded in a model card, e.g. ``("AP50", 0.83)``; ``None`` if untrained."""
    try:
        return get_task(card.kind).score_of(card)
    except KeyError:
        return None


def _load_builtin() -> None:
    from . import instance, panoptic, semantic  # noqa: F401  (each registers its task)


__all__ = [
    "IGNORE",
    "UNANNOTATED",
    "Metric",
    "Segmentation",
    "Targets",
    "Task",
    "get_task",
    "object_table",
    "register_task",
    "score_of",
    "task_names",
]
