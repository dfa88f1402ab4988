"""Progress reports and the generator driver shared by the engine's long operations.

Long engine work is a generator: it yields :class:`Progress` and *returns* its result. Widgets hand
the generator to a napari thread worker; the CLI and tests drive it with :func:`drive`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long operation.

    Attributes:
        step: Steps done so far (0..total).
        total: Steps planned; may grow when a time budget, not a step count, ends the work.
        note: A short human-readable line, e.g. ``"epoch 3/20 · loss 0.214"``.
        metrics: Numbers a front end may plot (``{"loss": 0.21, "val_dice": 0.88}``).
    """

    step: int
    total: int
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


Work = Generator[Progress, None, T]


def drive(work: Work[T], on_progress: Callable[[Progress], Any] | None = None) -> T:
    """Run an engine generator to completion and return its result.

    Args:
        work: A generator yielding :class:`Progress` and returning a value.
        on_progress: Called with every report (e.g. to update a tqdm bar).

    Returns:
        The generator's return value.
    """
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(report)


def map_progress(work: Work[T], fn: Callable[[Progress], Progress]) -> Work[T]:
    """Pass ``work``'s reports through ``fn`` (to rebase steps or prefix notes) and return its result."""
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        yield fn(report)
