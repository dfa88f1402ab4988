"""The *Annotate* dock widget: click or box objects into a Labels layer, from a model's maps or without one.

Mouse (tool *Click*, on the canvas): a click adds the object under it (a new id) or, near the object
being refined, adds to it; **Shift-click** always adds to the object being refined (where the model
sees another object); **Ctrl-click** (or a right click) says "not this": it takes away from the
object being refined, or deletes the object under it when none is. Tool *Box*: draw a rectangle (a
Shapes layer ``annotate boxes`` is made for it) and the objects inside it are added. Keys: **K** the
click tool, **J** the box tool, **N** finish the object (the next click starts a new one); none of
them is one of napari's own. The *Edit objects* section (:mod:`.annotate_edit`) merges, splits,
cuts, deletes, fills and propagates objects. Every change goes through ``Labels.data_setitem``, so napari's undo
(Ctrl-Z on the Labels layer) takes it back. The model's maps are computed once per image or slice,
in a worker, at the first click there (or with *Compute maps*).
"""

from __future__ import annotations

from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton, RadioButtons

from ..annotate import AnnotationSession, Edit, PlaneMaps, compute_maps
from ..annotate.maps import classical_maps
from ..model_files import load_model
from ..store import list_models
from ._common import RunControls, scroll_above, wrapped_label
from ._events import on_models_changed
from ._layers import current_slice, drawing_layer, layer_choices, still_click, take_drawn
from ._sections import collapsible
from .annotate_edit import EditObjects

NO_MODEL = "none (classical)"
TOOLS = ["off", "click", "box"]
KEYS = {"k": "click", "j": "box"}
FINISH_KEY = "n"
BOXES = "annotate boxes"


def _model_choices(_w: Any = None) -> list[tuple[str, str]]:
    """``none (classical)`` and every trained 2D model (clicks work on one plane)."""
    return [(NO_MODEL, "")] + [(m.label, str(m.path)) for m in list_models() if m.card.spatial_dims == 2]


def _maps_work(model: Any, plane: np.ndarray, rgb: bool) -> Any:
    if isinstance(model, str):
        model = load_model(model)
    maps = yield from compute_maps(model, plane, rgb=rgb)
    return maps


def _mods(event: Any) -> set[str]:
    return {str(getattr(m, "name", m)).lower() for m in getattr(event, "modifiers", ())}


def _is_negative(event: Any) -> bool:
    mods = _mods(event)
    return "control" in mods or "ctrl" in mods or getattr(event, "button", 1) == 2


class AnnotateWidget(Container):
    """Click and box annotation on the chosen image and Labels layer (2D, or the current slice of a volume)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="Image", choices=lambda _w: layer_choices(viewer, napari.layers.Image))
        self.labels_layer = ComboBox(label="Labels", choices=lambda _w: layer_choices(viewer, napari.layers.Labels))
        self.new_labels_btn = PushButton(text="New labels layer")
        self.model = ComboBox(label="Model", choices=_model_choices, tooltip="Where objects come from")
        self.model.native.setSizeAdjustPolicy(self.model.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.native.setMinimumContentsLength(20)
        self.tool = RadioButtons(label="Tool", choices=TOOLS, orientation="horizontal")
        self.tool.value = "off"
        self.finish_btn = PushButton(text="Finish object (N)")
        self.help = wrapped_label()
        self.help.value = (
            "Click: add an object, or add to the one being refined (Shift-click: always add to it); Ctrl-click (or right click): not this "
            "(deletes the object under it when none is being refined). Box: draw a rectangle. Keys: K click, "
            "J box, N finish the object. Undo: Ctrl-Z on the Labels layer."
        )
        self.controls = RunControls("Compute maps", self.compute)
        self.form = Container(widgets=[self.image, self.labels_layer, self.new_labels_btn, self.model])
        self.tools = Container(widgets=[self.tool, self.finish_btn, self.help])
        self.sections: Container = Container(widgets=[], labels=False)
        self.sections.margins = (0, 0, 0, 0)
        super().__init__(widgets=[self.controls], labels=False)
        body = Container(widgets=[self.form, self.sections], labels=False)
        # three docks share a laptop screen: the form may scroll down to a few lines, the run row stays
        self.margins = (4, 0, 4, 0)
        self.scroll = scroll_above(self, body, min_height=12)
        self.add_section("Click and box", self.tools)
        self.edit = EditObjects(self)  # merge, split, cut, delete, fill, remove small, propagate in Z
        self.add_section("Edit objects", self.edit)
        from .annotate_live import add_live_section  # scribbles with live training, correct this next

        self.live = add_live_section(self, viewer)
        self._maps: dict[tuple, PlaneMaps] = {}
        self._models: dict[str, Any] = {}
        self.session: AnnotationSession | None = None
        self._session_key: tuple | None = None
        self._pending: tuple | None = None
        self.last_edit: Edit | None = None
        self.new_labels_btn.changed.connect(lambda _=None: self.new_labels())
        self.finish_btn.changed.connect(lambda _=None: self.finish())
        self.tool.changed.connect(lambda _=None: self._tool_changed())
        self.model.changed.connect(lambda _=None: self._reset())
        self.image.changed.connect(lambda _=None: self._reset())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self._refresh_layers())
        on_models_changed(self, lambda _path: self.model.reset_choices())
        viewer.mouse_drag_callbacks.append(self._on_mouse)
        for key, tool in KEYS.items():
            viewer.bind_key(key, lambda _v, t=tool: setattr(self.tool, "value", t), overwrite=True)
        viewer.bind_key(FINISH_KEY, lambda _v: self.finish(), overwrite=True)
        self.native.destroyed.connect(lambda *_: self._disconnect(viewer))

    # --- sections -------------------------------------------------------------------------------
    def add_section(self, title: str, widget: Any, expanded: bool = True) -> Any:
        """Add a collapsible section ``title`` over ``widget`` (a QWidget or magicgui widget) under the form."""
        section = collapsible(title, widget, expanded)
        self.sections.native.layout().addWidget(section)
        return section

    # --- layers ---------------------------------------------------------------------------------
    def _refresh_layers(self) -> None:
        self.image.reset_choices()
        self.labels_layer.reset_choices()

    def new_labels(self) -> Any:
        """A new, empty int32 Labels layer the size of the image, chosen as the target."""
        image = self.image.value
        if image is None:
            self.controls.refuse("Open an image first: there is no image layer to annotate.")
            return None
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        layer = self._viewer.add_labels(
            np.zeros(shape, np.int32), name=f"{image.name} annotations", scale=image.scale, translate=image.translate
        )
        self.labels_layer.value = layer
        return layer

    def _disconnect(self, viewer: Any) -> None:
        if self._on_mouse in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_mouse)

    # --- tools ----------------------------------------------------------------------------------
    def _tool_changed(self) -> None:
        labels = self.labels_layer.value
        if self.tool.value == "box":
            shapes = self._boxes_layer()
            if shapes is not None:
                self._viewer.layers.selection.active = shapes
                shapes.mode = "add_rectangle"
        elif labels is not None:
            self._viewer.layers.selection.active = labels
            if self.tool.value == "click":
                labels.mode = "pan_zoom"  # a click is ours, not the brush's

    def _boxes_layer(self) -> Any:
        labels = self.labels_layer.value
        if labels is None:
            self.controls.refuse("Pick or make a Labels layer first.")
            return None
        return drawing_layer(
            self._viewer, BOXES, labels, self._on_box_drawn, edge_color="yellow", face_color="transparent"
        )

    def _on_box_drawn(self, event: Any) -> None:
        corners = take_drawn(event, self._viewer.layers[BOXES], self.labels_layer.value)
        if corners is not None:
            lo, hi = corners.min(0), corners.max(0)
            z = int(round(float(corners[0, 0]))) if corners.shape[1] == 3 else None
            self.box(float(lo[-2]), float(lo[-1]), float(hi[-2]), float(hi[-1]), z=z)

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if self.tool.value != "click" or self.labels_layer.value is None:
            return
        start = tuple(np.asarray(event.position, float))
        if (yield from still_click(event)):
            refine = True if "shift" in _mods(event) else None
            self.click_at_world(start, negative=_is_negative(event), refine=refine)

    # --- clicks and boxes -----------------------------------------------------------------------
    def click_at_world(
        self, position: tuple[float, ...], negative: bool = False, refine: bool | None = None
    ) -> Edit | None:
        """A click at a world ``position`` of the viewer (what a mouse press on the canvas gives);
        ``refine=True`` (Shift-click) always adds to the object being refined."""
        labels = self.labels_layer.value
        if labels is None:
            self.controls.refuse("Pick or make a Labels layer first.")
            return None
        coords = labels.world_to_data(position)
        z = int(round(float(coords[0]))) if labels.ndim == 3 else None
        return self.click(float(coords[-2]), float(coords[-1]), negative=negative, z=z, refine=refine)

    def click(
        self, y: float, x: float, negative: bool = False, z: int | None = None, refine: bool | None = None
    ) -> Edit | None:
        """A click at ``(y, x)`` of the labels (slice ``z`` of a volume); ``None`` while maps are computed."""
        session = self._session(z, pending=("click", y, x, negative, z, refine))
        if session is None:
            return None
        try:
            new = None if refine is None else not refine
            edit = session.add_click(y, x, positive=not negative, new_object=new)
        except ValueError as err:
            self.controls.refuse(str(err))
            return None
        return self._write(edit, z)

    def box(self, y0: float, x0: float, y1: float, x1: float, z: int | None = None) -> Edit | None:
        """The objects inside a box of the labels' pixels (slice ``z`` of a volume)."""
        session = self._session(z, pending=("box", y0, x0, y1, x1, z))
        if session is None:
            return None
        try:
            edit = session.box(y0, x0, y1, x1)
        except ValueError as err:
            self.controls.refuse(str(err))
            return None
        return self._write(edit, z)

    def finish(self) -> None:
        """End the object being refined: the next click starts a new one."""
        if self.session is not None:
            self.session.finish()
        self.controls.status.value = "Next click: a new object."

    def _write(self, edit: Edit, z: int | None) -> Edit:
        labels = self.labels_layer.value
        if edit.changed:
            labels.data_setitem(edit.indices(z), edit.values())
        self.last_edit = edit
        what = f"object {edit.object_id}" if edit.object_id else "objects"
        self.controls.status.value = f"{what}: {int((edit.before != edit.after).sum())} pixels changed."
        return edit

    # --- sessions and maps ----------------------------------------------------------------------
    def _plane(self, z: int | None) -> np.ndarray:
        image = self.image.value
        data = image.data[0] if image.multiscale else image.data
        return np.asarray(data[z] if z is not None else data)

    def _session(self, z: int | None, pending: tuple) -> AnnotationSession | None:
        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            self.controls.refuse("Pick an image and a Labels layer (or make one) first.")
            return None
        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        if tuple(spatial) != tuple(labels.data.shape):
            self.controls.refuse(
                f"Labels '{labels.name}' are {labels.data.shape} but image '{image.name}' is {tuple(spatial)}; "
                "pick the labels that belong to this image."
            )
            return None
        key = (id(image), id(labels), z, self.model.value)
        maps = self._maps.get((id(image), z, self.model.value))
        if maps is None:
            if self.model.value:
                self._pending = pending
                self.compute(z)
                return None
            maps = classical_maps(self._plane(z), bool(image.rgb))
            self._maps[(id(image), z, "")] = maps
        plane = np.asarray(labels.data[z] if z is not None else labels.data)
        if self.session is None or self._session_key != key:
            self.session = AnnotationSession(self._plane(z), plane, maps=maps, rgb=bool(image.rgb))
            self._session_key = key
        else:
            self.session.set_labels(plane)  # the user may have painted or undone something
        return self.session

    def _reset(self) -> None:
        self.session, self._session_key = None, None

    def _current_z(self) -> int | None:
        image = self.image.value
        if image is None:
            return None
        # the layer's own ndim: without an RGB axis, and defined for multiscale data (a list of levels)
        return current_slice(self._viewer, image) if image.ndim == 3 else None

    def compute(self, z: int | None = None) -> Any:
        """Compute the model's maps of the current image (its current slice) in a worker; returns it."""
        image, path = self.image.value, self.model.value
        if image is None:
            self.controls.refuse("Open an image first: there is no image layer to annotate.")
            return None
        if not path:
            self.controls.status.value = "No model: clicks use the image itself (nothing to compute)."
            return None
        if self.controls.worker is not None:
            return self.controls.worker
        z = self._current_z() if z is None else z
        key = (id(image), z, path)
        model = self._models.get(path, path)

        def done(maps: PlaneMaps) -> None:
            self._maps[key] = maps
            if maps.model is not None:
                self._models[path] = maps.model
            while len(self._maps) > 8:  # the latest planes only
                self._maps.pop(next(iter(self._maps)))
            self.controls.status.value = f"Maps ready ({maps.kind}); click on an object."
            pending, self._pending = self._pending, None
            if pending is not None:
                (self.click if pending[0] == "click" else self.box)(*pending[1:])

        return self.controls.launch(
            _maps_work,
            model,
            self._plane(z),
            bool(image.rgb),
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, f"Model maps: {p.note}"),
            on_done=done,
        )
