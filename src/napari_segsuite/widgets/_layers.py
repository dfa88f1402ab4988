"""The one place that builds napari layers from engine results."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
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
    table: Any = None,
    layer: napari.layers.Labels | None = None,
) -> napari.layers.Labels:
    """Add a segmentation as a *new* Labels layer named ``"<image> · <model>"`` (``" objects"`` added
    when ``objects_suffix``: the object layer beside a class layer, as a panoptic model gives).

    Existing layers are never written to: a second run gives a second layer (napari makes the name
    unique). The image's file geometry (``metadata["segsuite_source"]``, from this plugin's reader)
    is copied for the writer. Provenance goes to ``layer.metadata["segsuite"]`` (``role`` is ``"semantic"`` or
    ``"instances"``; both layers of one panoptic run share ``run_id``); painting marks the layer as
    edited. An object layer (``role="instances"``) gets a features table: each object's ``index``,
    ``area`` and centroid, and where the model gives them (``features``) its ``class``, ``score`` and
    the class's name. ``table``: that table made already (by :func:`prepare_result`, in the worker);
    then nothing here reads the whole array. ``layer``: the layer itself made already, hidden, in the
    worker (:func:`prepare_result`; ``labels`` and ``table`` are then its own).

    The layer is added hidden and shown in the next turns of the event loop (:func:`show_in_turns`):
    adding a layer, drawing it first and making its editing overlays are each napari work of tens of
    milliseconds on the GUI thread, and in one turn they froze the viewer for 0.2 s.
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
    if layer is None:
        if role == "instances" and table is None:
            table = _features_table(object_table(labels, features), card)
        layer = hidden_labels(labels, table)
    # on a hidden layer, not yet in the viewer, these setters cost next to nothing (napari does not slice it)
    layer.name, layer.scale, layer.translate = f"{image.name} · {name}{suffix}", image.scale, image.translate
    layer.metadata = meta
    overlays = _hide_overlays(layer)
    viewer.add_layer(layer)
    new = layer  # typed as never None, for the callback
    new.events.paint.connect(lambda _=None: _mark_edited(new))
    show_in_turns(viewer, new, overlays)
    return new


def hidden_labels(labels: Any, table: Any = None) -> napari.layers.Labels:
    """A napari Labels layer of ``labels`` (``table``: its features), made hidden: off the GUI thread
    (in a worker) it costs the GUI nothing, and napari's one-off set-up of its first Labels layer of a
    session (0.2-0.5 s) happens there too. Not drawn, not sliced until it is shown."""
    return napari.layers.Labels(labels, features=table, visible=False)


def _hide_overlays(layer: napari.layers.Layer) -> list[Any]:
    """Hide the layer's visible overlays (a Labels layer's polygon and brush outline): napari makes the
    visual of an overlay only once it is visible, so each can be made in an event-loop turn of its own."""
    overlays = [o for o in getattr(layer, "_overlays", {}).values() if getattr(o, "visible", False)]
    for overlay in overlays:
        overlay.visible = False
    return overlays


#: The pause between two steps of :func:`show_in_turns` (ms): enough for the frame of one step to be
#: drawn and the other events to be served before the next step starts.
STEP_MS = 15


def show_in_turns(viewer: napari.viewer.Viewer, layer: napari.layers.Layer, overlays: list[Any]) -> None:
    """Show a layer added hidden, then its ``overlays``, each in a later turn of the event loop.

    Showing it slices it and makes its texture (its first frame uploads it and compiles the shaders);
    each overlay's visual is made when it is shown. Each step is a few tens of milliseconds at most,
    and the viewer answers between them (napari keeps a hidden layer in pan-zoom mode: no painting on
    it before it shows). A layer removed meanwhile is shown at once: no visual to make any more.
    """
    from qtpy.QtCore import QTimer

    def show() -> None:
        layer.visible = True

    def show_overlay(overlay: Any) -> Callable[[], None]:
        return lambda: setattr(overlay, "visible", True)

    steps = [show, *(show_overlay(o) for o in overlays)]

    def run(i: int) -> None:
        if layer not in viewer.layers:  # removed: only its state to restore
            for step in steps[i:]:
                step()
            return
        steps[i]()
        if i + 1 < len(steps):
            QTimer.singleShot(STEP_MS, lambda: run(i + 1))

    QTimer.singleShot(STEP_MS, lambda: run(0))


@dataclass
class ResultPart:
    """One Labels layer to add, made ready off the GUI thread: the array in the dtype napari shows
    without converting it, an object layer's features table, and the napari layer of them, hidden
    (:func:`hidden_labels`)."""

    labels: np.ndarray
    role: str
    table: Any = None
    layer: Any = None


def prepare_result(
    labels: np.ndarray,
    card: ModelCard,
    role: str,
    features: dict[str, np.ndarray] | None = None,
    full_shape: tuple[int, ...] | None = None,
    z: int | None = None,
) -> ResultPart:
    """What :func:`add_result` needs, made in the worker so the GUI thread only adds the layer.

    ``full_shape``/``z``: one segmented slice of a volume, placed into a full-size array at ``z``.
    Object ids go to ``uint16`` when they fit (napari hashes 32-bit labels on the CPU at every redraw;
    ``uint16`` still leaves room to paint 65535 objects).
    """
    if not isinstance(labels, np.ndarray):  # a big result on disk (zarr): never read whole here
        return ResultPart(labels, role, None, hidden_labels(labels))
    if role == "instances":
        labels = compact_ids(labels)
    if full_shape is not None and z is not None:
        full = np.zeros(full_shape, labels.dtype)
        full[z] = labels
        labels = full
    table = _features_table(object_table(labels, features), card) if role == "instances" else None
    return ResultPart(labels, role, table, hidden_labels(labels, table))


def compact_ids(ids: np.ndarray) -> np.ndarray:
    """Object ids as ``uint16`` when the largest fits (else unchanged)."""
    if ids.dtype.itemsize > 2 and np.issubdtype(ids.dtype, np.integer):
        top = int(ids.max(initial=0))
        if int(ids.min(initial=0)) >= 0 and top <= np.iinfo(np.uint16).max:
            return ids.astype(np.uint16)
    return ids


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
    """A layer's data as it is, not copied (the full-resolution level of a multiscale layer): for a
    worker to copy (:func:`numpy.array`) off the GUI thread."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_array(layer: napari.layers.Layer) -> np.ndarray:
    """A plain numpy copy of a layer's data (the full-resolution level of a multiscale layer).

    A copy, so the user can keep painting while a worker reads it.
    """
    return np.array(layer_data(layer))


def current_slice(viewer: napari.viewer.Viewer, layer: napari.layers.Layer) -> int:
    """The index along ``layer``'s slice axis (the third from last) of the slice the viewer shows, read
    from the viewer's world point through the layer's own scale and translation: a time axis before it,
    or a slice spacing or offset of its own, does not shift it (``dims.current_step[0]`` would)."""
    n = layer.ndim
    z = float(layer.world_to_data(np.asarray(viewer.dims.point)[-n:])[-3])
    return int(np.clip(round(z), 0, layer_data(layer).shape[:n][-3] - 1))  # RGB: colour axis last


def drawing_layer(
    viewer: napari.viewer.Viewer, name: str, labels: napari.layers.Labels, on_drawn: Any, **style: Any
) -> Any:
    """The Shapes layer ``name`` the user draws on over ``labels`` (boxes, cut lines), in the labels'
    geometry, with ``on_drawn`` connected to its data events: made on first use, and made again when
    ``labels`` has another geometry (more axes, another scale or offset: a line drawn over a volume
    after a 2D layer must not land on slice 0); ``style``: Shapes keyword arguments (``edge_color``, ...)."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        same = layer.ndim == labels.ndim and np.allclose(layer.scale, labels.scale)
        if same and np.allclose(layer.translate, labels.translate):
            return layer
        viewer.layers.remove(layer)
    layer = viewer.add_shapes(ndim=labels.ndim, name=name, scale=labels.scale, translate=labels.translate, **style)
    layer.events.data.connect(on_drawn)
    return layer


def take_drawn(event: Any, shapes: Any, labels: napari.layers.Labels) -> np.ndarray | None:
    """The vertices, in ``labels``' data coordinates, of the shape just added to ``shapes`` (``None``
    on any other change); the drawing layer is emptied for the next shape."""
    if str(getattr(event, "action", "added")).lower().split(".")[-1] != "added" or not len(shapes.data):
        return None
    pts = np.array([labels.world_to_data(shapes.data_to_world(v)) for v in shapes.data[-1]])
    with shapes.events.data.blocker():
        shapes.data = []
    return pts


def still_click(event: Any) -> Generator[None, None, bool]:
    """In a napari mouse-drag callback (``yield from``): follow the press to its release; ``True``
    where the mouse stayed within 2 pixels (a click), ``False`` for a drag (the view pans as usual)."""
    start = np.asarray(event.position, float)
    yield
    moved = False
    while event.type == "mouse_move":
        moved = moved or bool(np.abs(np.asarray(event.position, float) - start).max() > 2)
        yield
    return not moved
