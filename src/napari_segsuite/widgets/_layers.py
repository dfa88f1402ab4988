"""The one place that builds napari layers from engine results."""

from __future__ import annotations

import time
import uuid
from typing import Any

import napari
import numpy as np

from ..card import ModelCard
from ..tasks import object_table


def add_result(
    viewer: napari.viewer.Viewer,
    labels: np.ndarray,
    image: napari.layers.Image,
    card: ModelCard,
    params: dict[str, Any],
    *,
    features: dict[str, np.ndarray] | None = None,
    role: str = "semantic",
    run_id: str | None = None,
    objects_suffix: bool = False,
) -> napari.layers.Labels:
    """Add a segmentation as a *new* Labels layer named ``"<image> · <model>"`` (``" objects"`` added
    when ``objects_suffix``: the object layer beside a class layer, as a panoptic model gives).

    Existing layers are never written to: a second run gives a second layer (napari makes the name
    unique). The image's file geometry (``metadata["segsuite_source"]``, from this plugin's reader)
    is copied for the writer. Provenance goes to ``layer.metadata["segsuite"]`` (``role`` is ``"semantic"`` or
    ``"instances"``; both layers of one panoptic run share ``run_id``); painting marks the layer as
    edited. An object layer (``role="instances"``) gets a features table: each object's ``index``,
    ``area`` and centroid, and where the model gives them (``features``) its ``class``, ``score`` and
    the class's name.
    """
    name = card.display_name
    meta = {
        "segsuite": {
            "run_id": run_id or uuid.uuid4().hex[:12],
            "role": role,
            "model": name,
            "model_path": card.path,
            "architecture": card.architecture,
            "kind": card.kind,
            "label_values": card.label_values,
            "class_names": card.class_names,
            "image": image.name,
            "params": params,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "edited": False,
        }
    }
    source = getattr(image, "metadata", {}).get("segsuite_source")
    if source:  # the scan's geometry: saving the labels as NIfTI puts them in its voxel grid
        meta["segsuite_source"] = source
    suffix = " objects" if objects_suffix else ""
    layer = viewer.add_labels(
        labels,
        name=f"{image.name} · {name}{suffix}",
        scale=image.scale,
        translate=image.translate,
        metadata=meta,
    )
    if role == "instances":
        layer.features = _features_table(object_table(labels, features), card)
    layer.events.paint.connect(lambda _=None: _mark_edited(layer))
    return layer


def _features_table(features: dict[str, np.ndarray], card: ModelCard) -> Any:
    """napari's features table: one row per object id (``index``), with the class's name where there is a class."""
    import pandas as pd

    names = dict(zip(card.label_values, card.class_names))
    table = pd.DataFrame({k: np.asarray(v) for k, v in features.items()})
    if "class" in table:
        table["class_name"] = [names.get(int(c), "") for c in table["class"]]
    return table


def partner_layer(viewer: napari.viewer.Viewer, layer: napari.layers.Labels) -> napari.layers.Labels | None:
    """The other Labels layer of the same panoptic run (semantic <-> instances), if it is still open."""
    meta = layer.metadata.get("segsuite") or {}
    for other in viewer.layers:
        m = getattr(other, "metadata", {}).get("segsuite") or {}
        if (
            other is not layer
            and isinstance(other, napari.layers.Labels)
            and m.get("run_id") == meta.get("run_id")
            and meta.get("run_id")
            and m.get("role") != meta.get("role")
        ):
            return other
    return None


def _mark_edited(layer: napari.layers.Labels) -> None:
    meta = layer.metadata.get("segsuite")
    if meta is not None:
        meta["edited"] = True


def layer_choices(viewer: napari.viewer.Viewer, kind: type) -> list[tuple[str, Any]]:
    """``(name, layer)`` pairs of the viewer's layers of one type, for a ComboBox."""
    return [(str(getattr(layer, "name", "")), layer) for layer in viewer.layers if isinstance(layer, kind)]


def layer_data(layer: napari.layers.Layer) -> Any:
    """A layer's data for a run: a lazy (dask or zarr) array as it is, never read whole here (the engine
    reads it block by block); anything else as a numpy copy (:func:`layer_array`)."""
    from ..lazy_io import is_lazy

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return data if is_lazy(data) else np.array(data)


def layer_array(layer: napari.layers.Layer) -> np.ndarray:
    """A plain numpy copy of a layer's data (the full-resolution level of a multiscale layer).

    A copy, so the user can keep painting while a worker reads it.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.array(data)
