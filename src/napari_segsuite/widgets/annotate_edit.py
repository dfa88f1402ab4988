"""The *Edit objects* section of the Annotate dock: merge, split, cut, delete, fill holes, remove small
objects and propagate an object through the slices of a volume.

Tools (on the canvas, while the dock's own *Click*/*Box* tool is off; choosing one turns the other
off): **merge** (key **G**) click two objects, the second becomes the first; **split** (**H**) click
twice inside one object, a seeded watershed parts it between the clicks; **cut** (**Shift-H**) draw a
line across an object in the ``annotate cuts`` Shapes layer (double-click ends it), its pieces get
their own ids; **delete** (**U**) click an object. Buttons fill the holes of the selected object (or
all), remove the objects under a size and carry the selected object up and down the volume from the
current slice (*Propagate in Z*). On a volume *Whole 3D object* edits the whole object, else the
current slice only (a cut is always on the slice). The *selected object* is the one being refined
with the Click tool, else the Labels layer's selected label; each edit selects the object it made.
None of G, H, Shift-H, U is one of napari's own keys. Every change is one ``Labels.data_setitem``,
one step of napari's undo. The work is done in :mod:`napari_segsuite.annotate.edit` and
:mod:`~napari_segsuite.annotate.propagate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton, RadioButtons, SpinBox

from ..annotate import Edit, compute_maps
from ..annotate import edit as ops
from ..annotate.propagate import joined, propagate, propagate_steps
from ..model_files import load_model
from ..progress import drive
from ._common import row, wrapped_label
from ._layers import current_slice, drawing_layer, still_click, take_drawn

if TYPE_CHECKING:
    from .annotate import AnnotateWidget

EDIT_TOOLS = ["off", "merge", "split", "cut", "delete"]
EDIT_KEYS = {"g": "merge", "h": "split", "Shift-H": "cut", "u": "delete"}
CUTS = "annotate cuts"


def _propagate_work(labels: np.ndarray, image: np.ndarray, obj: int, z: int, model: Any, rgb: bool, cache: dict) -> Any:
    """Propagation with a model's maps: each slice's maps are computed (or read from ``cache``) as it is reached."""
    if isinstance(model, str):
        model = load_model(model)

    def maps_for(k: int) -> Any:
        if k not in cache:
            cache[k] = drive(compute_maps(model, np.asarray(image[k]), rgb=rgb))
        return cache[k]

    edits = yield from propagate_steps(labels, image, obj, z, maps=maps_for, rgb=rgb)
    return edits


class EditObjects(Container):
    """The *Edit objects* section; ``dock`` is the Annotate dock it belongs to."""

    def __init__(self, dock: AnnotateWidget) -> None:
        self._dock = dock
        self._viewer = dock._viewer
        self.tool = RadioButtons(label="Edit", choices=EDIT_TOOLS, orientation="horizontal")
        self.tool.value = "off"
        self.whole = CheckBox(
            text="Whole 3D object", value=True, tooltip="On a volume: edit the whole object, else this slice"
        )
        self.fill_btn = PushButton(text="Fill holes")
        self.fill_all_btn = PushButton(text="Fill all holes")
        self.min_size = SpinBox(value=20, min=1, max=10**9, label="Min size", tooltip="Pixels (voxels on a volume)")
        self.small_btn = PushButton(text="Remove smaller than")
        self.propagate_btn = PushButton(
            text="Propagate in Z", tooltip="The selected object, up and down from this slice"
        )
        self.help = wrapped_label()
        self.help.value = (
            "G merge: click two objects. H split: click twice in one object. Shift-H cut: draw a line across "
            "an object (double-click ends it). U delete: click an object. Undo: Ctrl-Z on the Labels layer."
        )
        super().__init__(
            widgets=[
                row(Label(value="Edit"), self.tool),
                self.whole,
                row(self.fill_btn, self.fill_all_btn),
                row(self.small_btn, self.min_size),
                self.propagate_btn,
                self.help,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self._first: tuple[int, ...] | None = None
        self.tool.changed.connect(lambda _=None: self._tool_changed())
        dock.tool.changed.connect(lambda _=None: self._dock_tool_changed())
        dock.labels_layer.changed.connect(lambda _=None: self._labels_changed())
        self.fill_btn.changed.connect(lambda _=None: self.fill_holes())
        self.fill_all_btn.changed.connect(lambda _=None: self.fill_holes(all_objects=True))
        self.small_btn.changed.connect(lambda _=None: self.remove_small())
        self.propagate_btn.changed.connect(lambda _=None: self.propagate())
        self._viewer.mouse_drag_callbacks.append(self._on_mouse)
        for key, tool in EDIT_KEYS.items():
            self._viewer.bind_key(key, lambda _v, t=tool: setattr(self.tool, "value", t), overwrite=True)
        self.native.destroyed.connect(lambda *_: self._disconnect(self._viewer))
        self._labels_changed()

    def _disconnect(self, viewer: Any) -> None:
        if self._on_mouse in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_mouse)

    @property
    def _status(self) -> Any:
        return self._dock.controls.status

    def _refuse(self, message: str) -> None:
        self._dock.controls.refuse(message)

    # --- tools ----------------------------------------------------------------------------------
    def _tool_changed(self) -> None:
        self._first = None
        if self.tool.value == "off":
            return
        self._dock.tool.value = "off"  # one tool at a time
        if self.tool.value == "cut":
            shapes = self._cuts_layer()
            if shapes is not None:
                self._viewer.layers.selection.active = shapes
                shapes.mode = "add_path"
            return
        labels = self._dock.labels_layer.value
        if labels is not None:
            self._viewer.layers.selection.active = labels
            labels.mode = "pan_zoom"  # a click is ours, not the brush's
        self._status.value = {
            "merge": "Merge: click the object to keep, then the one to join to it.",
            "split": "Split: click inside the object twice, once in each part.",
            "delete": "Delete: click an object.",
        }[self.tool.value]

    def _labels_changed(self) -> None:
        """What only a volume needs shows only for a volume's labels."""
        labels = self._dock.labels_layer.value
        volume = labels is None or labels.ndim == 3
        self.whole.visible = self.propagate_btn.visible = volume
        self._first = None

    def _dock_tool_changed(self) -> None:
        if self._dock.tool.value != "off":
            self.tool.value = "off"

    def _cuts_layer(self) -> Any:
        labels = self._dock.labels_layer.value
        if labels is None:
            self._refuse("Pick or make a Labels layer first.")
            return None
        return drawing_layer(self._viewer, CUTS, labels, self._on_cut_drawn, edge_color="red")

    def _on_cut_drawn(self, event: Any) -> None:
        labels = self._dock.labels_layer.value
        pts = take_drawn(event, self._viewer.layers[CUTS], labels)
        if pts is not None:
            self.cut(pts[:, -2:], z=int(round(float(pts[0, 0]))) if labels.ndim == 3 else None)

    def _on_mouse(self, viewer: Any, event: Any) -> Any:
        if self.tool.value in ("off", "cut") or self._dock.labels_layer.value is None:
            return
        start = tuple(np.asarray(event.position, float))
        if (yield from still_click(event)):
            self.click_at_world(start)

    def click_at_world(self, position: tuple[float, ...]) -> Edit | None:
        """A click of the edit tool at a world ``position`` of the viewer."""
        labels = self._dock.labels_layer.value
        if labels is None:
            self._refuse("Pick or make a Labels layer first.")
            return None
        return self.click(tuple(float(c) for c in labels.world_to_data(position)))

    def click(self, point: tuple[float, ...]) -> Edit | None:
        """A click at ``point`` of the labels' pixels (``(y, x)`` or ``(z, y, x)``) with the current tool."""
        labels = self._dock.labels_layer.value
        idx = tuple(int(round(c)) for c in point)
        if labels is None or not all(0 <= i < n for i, n in zip(idx, labels.data.shape)):
            return None
        hit = int(labels.data[idx])
        tool = self.tool.value
        if tool == "delete":
            return self._run(lambda target, _z: ops.delete(target, hit), idx) if hit else None
        if self._first is None:
            if not hit:
                self._refuse(f"{tool.title()}: click on an object, not the background.")
                return None
            self._first = idx
            self._status.value = (
                f"{tool.title()}: object {hit}; now click the {'other object' if tool == 'merge' else 'second part'}."
            )
            return None
        first, self._first = self._first, None
        if tool == "merge":
            return self._run(lambda target, _z: ops.merge(target, int(labels.data[first]), hit), idx)
        return self._split(first, idx)

    # --- edits ----------------------------------------------------------------------------------
    def _volume_mode(self) -> bool:
        labels = self._dock.labels_layer.value
        return labels is not None and labels.ndim == 3 and bool(self.whole.value)

    def _run(self, op: Any, idx: tuple[int, ...] | None = None, whole: bool | None = None) -> Edit | None:
        """``op(target, z)`` on the labels (the whole volume, or the slice of ``idx``/the current one) and write it."""
        labels = self._dock.labels_layer.value
        if labels is None:
            self._refuse("Pick or make a Labels layer first.")
            return None
        data = labels.data
        z = None
        if labels.ndim == 3 and not (self._volume_mode() if whole is None else whole):
            z = idx[0] if idx is not None else current_slice(self._viewer, labels)
        target = np.asarray(data if z is None else data[z])
        try:
            edit = op(target, z)
        except ValueError as err:
            self._refuse(str(err))
            return None
        return self._write(edit, z)

    def _write(self, edit: Edit, z: int | None) -> Edit:
        labels = self._dock.labels_layer.value
        n = int((edit.before != edit.after).sum())
        if edit.changed:
            labels.data_setitem(edit.indices(z), edit.values())
        if edit.object_id and (labels.data == edit.object_id).any():
            labels.selected_label = edit.object_id
        if self._dock.session is not None:
            self._dock.session.finish()  # the object being refined may be gone
        self._dock.last_edit = edit
        self._status.value = f"{n} pixels changed." if n else "Nothing to change."
        return edit

    def _free_id(self, labels: Any) -> int | None:
        """The next free id of ``labels`` (``None``, refused with the message, where its dtype holds no more)."""
        try:
            return ops.free_id(np.asarray(labels.data))
        except ValueError as err:
            self._refuse(str(err))
            return None

    def _split(self, a: tuple[int, ...], b: tuple[int, ...]) -> Edit | None:
        labels = self._dock.labels_layer.value
        nxt = self._free_id(labels)
        if nxt is None:
            return None
        if labels.ndim == 3 and not self._volume_mode():
            if a[0] != b[0]:
                self._refuse("Split on a slice: click both parts on the same slice (or tick Whole 3D object).")
                return None
            return self._run(lambda t, _z: ops.split_by_seeds(t, a[1:], b[1:], next_id=nxt, **self._maps_of(a[0])), a)
        if labels.ndim == 3:
            return self._run(lambda t, _z: ops.split_by_seeds(t, a, b, next_id=nxt), a)
        return self._run(lambda t, _z: ops.split_by_seeds(t, a, b, next_id=nxt, **self._maps_of(None)), a)

    def _maps_of(self, z: int | None) -> dict[str, Any]:
        """The image (and model foreground) the dock has for slice ``z``, to guide a split."""
        image = self._dock.image.value
        maps = self._dock._maps.get((id(image), z, self._dock.model.value)) if image is not None else None
        return {} if maps is None else {"smooth": maps.smooth, "fg": maps.fg}

    def cut(self, points: np.ndarray, z: int | None = None) -> Edit | None:
        """Cut the object under the polyline ``points`` (``(y, x)`` of the labels, on slice ``z``)."""
        labels = self._dock.labels_layer.value
        if labels is None:
            self._refuse("Pick or make a Labels layer first.")
            return None
        nxt = self._free_id(labels)
        if nxt is None:
            return None
        z = z if z is not None or labels.ndim == 2 else current_slice(self._viewer, labels)
        return self._run(lambda t, _z: ops.split_by_line(t, points, next_id=nxt), None if z is None else (z,), False)

    def selected(self, z: int | None = None) -> int:
        """The selected object: the one being refined with the Click tool, else the layer's selected label (0: none)."""
        labels = self._dock.labels_layer.value
        if labels is None:
            return 0
        plane = labels.data if z is None else labels.data[z]
        session = self._dock.session
        for obj in (session.active if session is not None else 0, int(labels.selected_label)):
            if obj and (np.asarray(plane) == obj).any():
                return int(obj)
        return 0

    def fill_holes(self, all_objects: bool = False) -> Edit | None:
        """Fill the holes of the selected object (or of all); a volume's holes slice by slice."""
        labels = self._dock.labels_layer.value
        z = None if labels is None or labels.ndim == 2 or self._volume_mode() else current_slice(self._viewer, labels)
        obj = 0 if all_objects else self.selected(z)
        if not all_objects and not obj:
            self._refuse("Select an object first (click it with the Click tool, or pick its label).")
            return None
        return self._run(lambda t, _z: ops.fill_holes(t, None if all_objects else [obj], planes=True))

    def remove_small(self) -> Edit | None:
        """Delete the objects smaller than *Min size* (on the slice, or in the volume)."""
        return self._run(lambda t, _z: ops.remove_small(t, int(self.min_size.value)))

    def propagate(self) -> Any:
        """Carry the selected object from the current slice up and down the volume (a model's maps: in a worker)."""
        dock = self._dock
        labels, image = dock.labels_layer.value, dock.image.value
        if labels is None or image is None or labels.ndim != 3:
            self._refuse("Propagate in Z needs a volume: pick a 3D image and its Labels layer.")
            return None
        z = current_slice(self._viewer, labels)
        obj = self.selected(z)
        if not obj:
            self._refuse(f"Select an object on slice {z} first (click it with the Click tool, or pick its label).")
            return None
        data = image.data[0] if image.multiscale else image.data
        rgb = bool(image.rgb)
        if not dock.model.value:
            try:
                edits = propagate(np.asarray(labels.data), data, obj, z, rgb=rgb)  # a lazy image: its slices only
            except ValueError as err:
                self._refuse(str(err))
                return None
            self._write_all(edits, obj, labels)
            return edits
        if dock.controls.busy():
            return None
        path = dock.model.value
        cache = {k[1]: m for k, m in dock._maps.items() if k[0] == id(image) and k[2] == path}
        return dock.controls.launch(
            _propagate_work,
            np.array(labels.data),
            data,
            obj,
            z,
            dock._models.get(path, path),
            rgb,
            cache,
            on_yield=lambda p: dock.controls.show_progress(p.step, p.total, f"Propagating object {obj}: {p.note}"),
            on_done=lambda edits: self._write_all(edits, obj, labels),
        )

    def _write_all(self, edits: list[Edit], obj: int, labels: Any) -> None:
        """Write a propagation into the layer it was computed from (if it is still open), on the pixels
        that still hold what they held then (what the user painted meanwhile stays)."""
        if labels not in self._viewer.layers:
            self._refuse(f"The Labels layer {labels.name!r} was closed: the propagation was not written.")
            return
        idx, values = joined(edits)
        if len(values):
            before = np.concatenate([e.before[e.before != e.after] for e in edits if e.changed])
            same = np.asarray(labels.data[idx]) == before
            idx, values = tuple(i[same] for i in idx), values[same]
        if len(values):
            labels.data_setitem(idx, values)  # all slices at once: one undo step
        slices = sorted(e.z0 for e in edits)
        where = f"slices {slices[0]}..{slices[-1]}" if slices else "no other slice"
        self._status.value = f"Object {obj} propagated to {where} ({len(values)} pixels changed)."
