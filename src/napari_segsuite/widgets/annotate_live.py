"""The Annotate dock's *Scribbles (live training)* section: paint a few strokes per class in a
scribbles Labels layer (0 not annotated, 1, 2, ... the classes) and a small network learns from them
while you paint (:class:`~..annotate.live.LiveTrainer`, in a thread worker); its prediction over the
visible field of view is refreshed in ``"<image> live prediction"`` every few seconds. *Accept* copies
the prediction into the dock's Labels layer where you have not labelled (undo: Ctrl-Z there).
*Correct this next* moves the camera to the tile the model (the live one, else the dock's) is least sure of.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton
from napari.qt.threading import create_worker

from ..annotate.live import LiveConfig, LiveTrainer
from ..annotate.uncertainty import Uncertainty, rank_images
from ..model_files import SegModel, load_model
from ._common import RunControls, guard_triton, row
from ._layers import layer_array, layer_choices

TITLE = "Scribbles (live training)"


def _live_work(image: np.ndarray, strokes: np.ndarray, rgb: bool, config: LiveConfig) -> Any:
    trainer = LiveTrainer(image, strokes, rgb=rgb, config=config)  # normalising the image: here, not in the GUI
    yield trainer
    yield from trainer.run()
    return trainer


def _rank_work(model: SegModel | str, image: np.ndarray, rgb: bool) -> Any:
    model = load_model(model) if isinstance(model, str) else model
    ranking = yield from rank_images(model, [image], [rgb])
    return None if not ranking else ranking[0][1]


def show_region(layer: Any, region: tuple[slice, ...], values: np.ndarray) -> None:
    """Write ``values`` into ``layer.data[region]`` and redraw only that part (no undo history, no
    wholesale refresh): what napari's own painting does after a stroke."""
    layer.data[region] = values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # private access from a plugin: napari's own painting path
        try:
            point = layer._slice_input.point  # the slice on screen; a region on another slice needs no redraw
            if layer.ndim == 3 and not region[0].start <= round(float(point[0])) < region[0].stop:
                return
            texture = layer.colormap._data_to_texture(values.reshape(values.shape[-2:]))
            layer._slice.image.view[region[-2:]] = texture
            layer._accumulate_updated_slice(region)
            layer._partial_labels_refresh()
        except (AttributeError, TypeError, IndexError, ValueError):  # another napari: the whole layer
            layer.refresh()


def _background_clear(layer: Any) -> None:
    """Class 1 (the background) drawn transparent, the other classes in the colours their strokes have."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        colors: dict[int | None, Any] = {None: "transparent", 0: "transparent", 1: "transparent"}
        colors.update({v: np.array(layer.colormap.map(v), np.float32) for v in range(2, 256)})
        layer.colormap = DirectLabelColormap(color_dict=colors)
    except (ImportError, AttributeError, TypeError, ValueError):  # another napari: all classes shown
        pass


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def visible_region(viewer: Any, layer: Any) -> tuple[slice, ...]:
    """The part of ``layer``'s data on screen: ``(y, x)`` slices, with ``z`` one slice for a volume."""
    h, w = (float(v) for v in viewer.canvas.size)
    cam = camera(viewer)
    zoom = max(float(cam.zoom), 1e-6)
    cy, cx = (float(v) for v in cam.center[-2:])
    point = list(viewer.dims.point)
    corners = []
    for dy, dx in ((-h, -w), (h, w)):
        p = list(point)
        p[-2:] = [cy + dy / zoom / 2, cx + dx / zoom / 2]
        corners.append(np.asarray(layer.world_to_data(p[-layer.ndim :]), float))
    lo, hi = np.minimum(*corners), np.maximum(*corners)
    out = [slice(max(0, int(np.floor(a))), max(0, int(np.ceil(b)) + 1)) for a, b in zip(lo[-2:], hi[-2:])]
    if layer.ndim == 3:
        z = int(round(float(layer.world_to_data(point[-3:])[0])))
        out.insert(0, slice(z, z + 1))
    return tuple(out)


def parse_classes(text: str) -> list[int] | None:
    """``""``: every class but 1 (the background); ``"all"``: every class; else ``"2, 3"``."""
    text = text.strip().lower()
    if text == "all":
        return None
    if not text:
        return list(range(2, 256))
    try:
        return [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"Classes to accept: {text!r} is not a list of class values such as 2, 3.") from None


class LiveSection(Container):
    """The section's widgets and its worker; ``dock`` is the :class:`~.annotate.AnnotateWidget`."""

    def __init__(self, dock: Any, viewer: napari.viewer.Viewer, config: LiveConfig | None = None) -> None:
        self._dock, self._viewer = dock, viewer
        self.config = config or LiveConfig()
        self.scribbles = ComboBox(
            label="Scribbles",
            choices=lambda _w: layer_choices(viewer, napari.layers.Labels),
            tooltip="Strokes: 0 not annotated, 1 background, 2, 3, ... the classes",
        )
        self.new_btn = PushButton(text="New scribbles layer")
        self.pause_btn = PushButton(text="Pause", enabled=False)
        self.accept_classes = LineEdit(
            label="Accept classes",
            value="",
            tooltip="Classes Accept copies: empty = all but 1 (the background); 'all'; or e.g. 2, 3",
        )
        self.accept_btn = PushButton(text="Accept into labels", enabled=False)
        self.next_btn = PushButton(text="Correct this next", tooltip="Go to the tile the model is least sure of")
        self.controls = RunControls("Start", self.start)
        self.controls.cancel_btn.text = "Stop"
        self.controls.cancel_btn.native.parentWidget().layout().addWidget(self.pause_btn.native)
        form = Container(widgets=[self.scribbles, self.accept_classes])
        form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[form, self.new_btn, self.controls, row(self.accept_btn, self.next_btn)], labels=False)
        self.margins = (0, 0, 0, 0)
        self.trainer: LiveTrainer | None = None
        self.prediction_layer: Any = None
        self.refreshes = 0
        dock.image.changed.connect(lambda _=None: self.forget())
        self._stop_asked = False
        self._stroke_at: float | None = None
        self.stroke_delays: list[float] = []  #: Seconds from a stroke to the first prediction trained on it.
        self._stroke_version = 0
        self._rank_worker: Any = None
        self.new_btn.changed.connect(lambda _=None: self.new_scribbles())
        self.pause_btn.changed.connect(lambda _=None: self.toggle_pause())
        self.accept_btn.changed.connect(lambda _=None: self.accept())
        self.next_btn.changed.connect(lambda _=None: self.correct_next())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self.scribbles.reset_choices())
        for ev in (camera(viewer).events.center, camera(viewer).events.zoom, viewer.dims.events.current_step):
            ev.connect(self._view_changed)

    # --- layers ---------------------------------------------------------------------------------------
    def new_scribbles(self) -> Any:
        image = self._dock.image.value
        if image is None:
            return self.controls.refuse("Open an image first: there is no image layer to scribble on.")
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        layer = self._viewer.add_labels(
            np.zeros(shape, np.uint8), name=f"{image.name} scribbles", scale=image.scale, translate=image.translate
        )
        layer.brush_size, layer.selected_label, layer.mode = 4, 1, "paint"
        self.scribbles.value = layer
        self.controls.status.value = "Paint label 1 on background and 2, 3, ... on each class, then Start."
        return layer

    def _prediction(self, image: Any, shape: tuple[int, ...]) -> Any:
        name = f"{image.name} live prediction"
        if name in self._viewer.layers and self._viewer.layers[name].data.shape == shape:
            return self._viewer.layers[name]
        layer = self._viewer.add_labels(
            np.zeros(shape, np.uint8), name=name, scale=image.scale, translate=image.translate, opacity=0.5
        )
        _background_clear(layer)
        scribbles = self.scribbles.value
        if scribbles in self._viewer.layers:  # under the strokes, which stay in view and selected
            layers = self._viewer.layers
            layers.move(layers.index(layer), layers.index(scribbles))
            layers.selection.active = scribbles
        return layer

    # --- the run --------------------------------------------------------------------------------------
    def start(self) -> Any:
        if self.controls.busy():
            return None
        image = self._dock.image.value
        scribbles = self.scribbles.value or self.new_scribbles()
        if image is None or scribbles is None:
            return None
        shape = tuple(image.data.shape[:-1] if image.rgb else image.data.shape)
        if tuple(scribbles.data.shape) != shape:
            return self.controls.refuse(
                f"Scribbles '{scribbles.name}' are {scribbles.data.shape} but image '{image.name}' is {shape}."
            )
        self.prediction_layer = self._prediction(image, shape)
        self.trainer, self._stop_asked, self.refreshes = None, False, 0
        scribbles.events.paint.connect(self._strokes_changed)
        scribbles.events.set_data.connect(self._strokes_changed)

        def done(_trainer: Any) -> None:
            self._disconnect(scribbles)
            self.pause_btn.enabled = False
            steps = self.trainer.step if self.trainer is not None else 0
            self.controls.status.value = f"Stopped after {steps} steps; Accept copies the prediction into the labels."

        worker = self.controls.launch(
            _live_work,
            layer_array(image),
            np.array(scribbles.data),
            bool(image.rgb),
            self.config,
            on_yield=self._on_yield,
            on_done=done,
            on_cancel=self.stop,
        )
        worker.errored.connect(lambda _e: self._disconnect(scribbles))
        self.controls.bar.visible = False  # no end to show: the status line says how it goes
        self.pause_btn.enabled, self.pause_btn.text = True, "Pause"
        self.controls.status.value = "Starting: paint strokes of at least two classes."
        return worker

    def stop(self) -> None:
        self._stop_asked = True
        if self.trainer is not None:
            self.trainer.stop()

    def toggle_pause(self) -> None:
        if self.trainer is None:
            return
        if self.trainer.paused:
            self.trainer.resume()
            self.pause_btn.text = "Pause"
        else:
            self.trainer.pause()
            self.pause_btn.text = "Resume"
            self.controls.status.value = f"Paused at step {self.trainer.step}."

    def _disconnect(self, scribbles: Any) -> None:
        for ev in (scribbles.events.paint, scribbles.events.set_data):
            ev.disconnect(self._strokes_changed)

    def _strokes_changed(self, _event: Any = None) -> None:
        layer = self.scribbles.value
        if self.trainer is not None and layer is not None:
            self.trainer.update_labels(layer.data)  # read (copied) in the worker, before its next step
            if self._stroke_at is None:
                self._stroke_at, self._stroke_version = time.perf_counter(), self.trainer.version + 1

    def _view_changed(self, _event: Any = None) -> None:
        if self.trainer is not None and self.prediction_layer is not None:
            self.trainer.set_view(visible_region(self._viewer, self.prediction_layer))

    def _on_yield(self, item: Any) -> None:
        if isinstance(item, LiveTrainer):
            self.trainer = item
            self.accept_btn.enabled = True
            if self._stop_asked:
                item.stop()
            self._view_changed()
            return
        layer = self.prediction_layer
        if layer is None or layer not in self._viewer.layers:
            return
        show_region(layer, item.region, item.classes)
        self.refreshes += 1
        if self._stroke_at is not None and item.version >= self._stroke_version:
            self.stroke_delays.append(time.perf_counter() - self._stroke_at)
            self._stroke_at = None
        loss = "" if np.isnan(item.loss) else f" · loss {item.loss:.3f}"
        self.controls.status.value = f"Step {item.step}{loss} · {item.classes.max()} classes · paint to correct it."

    # --- after ----------------------------------------------------------------------------------------
    def forget(self) -> None:
        """Another image: live training on the last one stops and its prediction can no longer be accepted."""
        if self.trainer is not None:
            self.trainer.stop()
        self.trainer = None
        self.accept_btn.enabled = False

    def accept(self) -> Any:
        """Copy the prediction into the dock's Labels layer where it is 0 (one undo step)."""
        labels = self._dock.labels_layer.value
        if self.trainer is None or labels is None:
            return self.controls.refuse("Start live training and pick a Labels layer (or make one) first.")
        try:
            where, values = self.trainer.accept(labels.data, parse_classes(self.accept_classes.value))
        except ValueError as err:
            return self.controls.refuse(str(err))
        if len(values):
            labels.data_setitem(where, values)
        self.controls.status.value = f"Accepted {len(values)} pixels into '{labels.name}' (Ctrl-Z there undoes it)."
        return len(values)

    def correct_next(self) -> Any:
        """Score the image with the live model (else the dock's model) in a worker and go to its most uncertain tile."""
        image = self._dock.image.value
        model: SegModel | str | None = self._dock.model.value or None
        if self.trainer is not None:
            model = self.trainer.snapshot()
        if image is None or model is None:
            return self.controls.refuse("Start live training (or pick a model above) first: uncertainty needs a model.")
        guard_triton()
        worker = create_worker(_rank_work, model, layer_array(image), bool(image.rgb), _start_thread=False)
        worker.returned.connect(lambda u: self.go_to(u, image))
        worker.errored.connect(lambda err: self.controls.refuse(str(err)))
        self._rank_worker = worker
        self.next_btn.enabled = False
        worker.finished.connect(lambda: setattr(self.next_btn, "enabled", True))
        worker.start()
        return worker

    def go_to(self, u: Uncertainty | None, image: Any) -> None:
        """Centre the camera on the tile ``u`` names (in ``image``'s data) and zoom to it."""
        if u is None:
            self.controls.status.value = "This model has no maps to score (an object model)."
            return
        centre = [(s.start + s.stop - 1) / 2 for s in u.tile]
        world = image.data_to_world(centre)
        if len(u.tile) == 3:
            step = list(self._viewer.dims.current_step)
            step[-3] = u.tile[0].start
            self._viewer.dims.current_step = tuple(step)
        cam = camera(self._viewer)
        cam.center = tuple(float(v) for v in world[-2:])
        h, w = (float(v) for v in self._viewer.canvas.size)
        size = [(s.stop - s.start) * float(abs(sc)) for s, sc in zip(u.tile[-2:], image.scale[-2:])]
        cam.zoom = 0.9 * min(h / size[0], w / size[1])
        self.controls.status.value = f"Most uncertain here (mean uncertainty {u.tile_score:.2f}): correct this next."


def add_live_section(dock: Any, viewer: napari.viewer.Viewer) -> LiveSection:
    """The section, added to the Annotate dock (folded: it opens on a click)."""
    section = LiveSection(dock, viewer)
    dock.add_section(TITLE, section, expanded=False)
    return section
