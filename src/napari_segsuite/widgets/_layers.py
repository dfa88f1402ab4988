"""The one place that builds napari layers from engine results."""

from __future__ import annotations

import time
import uuid
from typing import Any

import napari
import numpy as np


def add_result(
    viewer: napari.viewer.Viewer, labels: np.ndarray, image: napari.layers.Image, card: dict[str, Any],
    params: dict[str, Any],
) -> napari.layers.Labels:
    """Add a segmentation as a *new* Labels layer named ``"<image> · <model>"``.

    Existing layers are never written to: a second run gives a second layer (napari makes the name
    unique). Provenance goes to ``layer.metadata["segsuite"]``; painting marks the layer as edited.
    """
    name = card.get("name") or card.get("architecture", "model")
    meta = {
        "segsuite": {
            "run_id": uuid.uuid4().hex[:12],
            "model": name,
            "model_path": card.get("path"),
            "architecture": card.get("architecture"),
            "kind": card.get("kind"),
            "label_values": card.get("label_values"),
            "class_names": card.get("class_names"),
            "image": image.name,
            "params": params,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "edited": False,
        }
    }
    layer = viewer.add_labels(
        labels, name=f"{image.name} · {name}", scale=image.scale, translate=image.translate, metadata=meta,
    )
    layer.events.paint.connect(lambda _=None: _mark_edited(layer))
    return layer


def _mark_edited(layer: napari.layers.Labels) -> None:
    meta = layer.metadata.get("segsuite")
    if meta is not None:
        meta["edited"] = True


def layer_choices(viewer: napari.viewer.Viewer, kind: type) -> list[tuple[str, Any]]:
    """``(name, layer)`` pairs of the viewer's layers of one type, for a ComboBox."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]


def layer_array(layer: napari.layers.Layer) -> np.ndarray:
    """A plain numpy copy of a layer's data (the full-resolution level of a multiscale layer).

    A copy, so the user can keep painting while a worker reads it.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.array(data)
