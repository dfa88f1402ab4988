"""What the Fine-tune dock can start from: new architectures and trained models, and what each takes."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np

from ..card import ModelCard
from ..models import available, get_spec
from ..store import list_models
from ..tasks import Task, get_task


def _base_choices(_w: Any = None) -> list[tuple[str, str]]:
    archs = [(f"{s.name} (new, random weights)", s.name) for s in available()]
    return archs + [(m.label, str(m.path)) for m in list_models()]


def _card_of(base: str) -> ModelCard | None:
    return next((m.card for m in list_models() if str(m.path) == base), None)


def _task_of(base: str) -> Task:
    """The task of a base choice (an architecture name or a trained model's folder)."""
    if base in {s.name for s in available()}:
        return get_task(get_spec(base).kind)
    card = _card_of(base)
    return get_task(card.kind if card is not None else "semantic")


def _is_object_model(base: str) -> bool:
    """Whether the base is an object model (Mask R-CNN, SOLO, DeepMask), which can learn a class per object."""
    card = _card_of(base)
    arch = base if card is None else card.architecture
    try:
        return get_spec(arch).objects
    except KeyError:
        return False


def _class_image(layer: napari.layers.Labels, ids: np.ndarray) -> np.ndarray | None:
    """Class values per pixel from an instance layer's ``features`` (``index`` -> ``class``), or ``None``
    when the layer has no class table or only one class. Objects the user painted with a new id take
    the most common class."""
    table = getattr(layer, "features", None)
    if table is None or "class" not in table or "index" not in table or table["class"].nunique() < 2:
        return None
    cls = dict(zip(table["index"].astype(int), table["class"].astype(int)))
    common = int(table["class"].mode().iloc[0])
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    for i in range(1, len(lut)):
        lut[i] = cls.get(i, common)
    return lut[ids]


def _takes(base: str) -> tuple[int | None, int]:
    """``(in_channels, spatial_dims)`` of a base choice; ``in_channels`` is ``None`` for a new
    architecture (its channels follow the images it is trained on)."""
    card = _card_of(base)
    if card is not None:
        return card.in_channels, card.spatial_dims
    try:
        return None, get_spec(base).spatial_dims
    except KeyError:
        return None, 2


def plan_text(base: str | None, images: list[Any], epochs: int, minutes: float) -> str:
    """One line on what *Train* will do with ``base`` on the image layers ``images``: crop, batch, steps
    per epoch, learning rate and the limit (the engine's own plan, from the layers' shapes only)."""
    from ..plan import preview
    from ..training import TrainConfig

    if base is None or not images:
        return ""
    shapes = [tuple(int(n) for n in (layer.data.shape[:-1] if layer.rgb else layer.data.shape)) for layer in images]
    cfg = TrainConfig(epochs=epochs, time_budget=minutes * 60 or None)
    try:
        tp = preview(base, shapes, cfg)
    except (KeyError, ValueError, OSError):
        return ""
    limit = f"{epochs} epochs" + (f" or {minutes:g} min, whichever comes first" if minutes else "")
    return f"Plan: {tp.describe()}; stops after {limit} (or 20 epochs without improvement)."


def guide_text(base: str | None) -> str:
    """One line on what the chosen model is good for (the registry's description)."""
    if base is None:
        return ""
    if base in {s.name for s in available()}:
        return get_spec(base).description
    return "Fine-tune this trained model (its classes stay)."
