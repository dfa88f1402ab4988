"""The *Segment* dock widget: pick a trained model and an image layer, get a new Labels layer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox

from ..blockwise import BIG_LAYER_VALUES, segment_to_zarr
from ..checks import channel_conversion
from ..inference import segment
from ..lazy_io import is_lazy
from ..model_files import load_model
from ..store import StoredModel, delete_model, export_model, import_model, list_models, rename_model
from ._common import RunControls, ask, check_fit, fit_note, wrapped_label
from ._events import on_models_changed, store_events
from ._layers import add_result, current_slice, layer_choices, layer_data, prepare_result

DEVICES = ["auto", "cpu", "cuda", "mps"]


def _model_choices(_w: Any = None) -> list[tuple[str, str]]:
    """The picker: each trained model's line, with its class names."""
    return [(f"{m.label} · {', '.join(m.card.class_names)}", str(m.path)) for m in list_models()]


def _fits(m: StoredModel, image: Any) -> bool:
    """Whether ``m`` takes ``image`` as it is (channels and dimensions)."""
    shape, rgb = tuple(image.data[0].shape if image.multiscale else image.data.shape), bool(image.rgb)
    volume = len(shape) - int(rgb) == 3
    return channel_conversion(m.card.in_channels, shape, rgb) is None and (m.card.spatial_dims == 2 or volume)


#: The Export dialog's file types: (filter, format); the segsuite zip needs no worker.
EXPORT_FILTERS = [
    ("segsuite models (*.segsuite.zip)", "segsuite"),
    ("bioimage.io package (*.zip)", "bioimageio"),
    ("ONNX (*.onnx)", "onnx"),
    ("TorchScript (*.pt)", "torchscript"),
]


def _export_work(path: str, fmt: str, dest: str) -> Any:
    from ..export import export
    from ..progress import Progress

    yield Progress(0, 1, f"Exporting as {fmt} and checking it against PyTorch...")
    return export(path, fmt, dest, overwrite=True)


def _rois_work(labels: Any, dest: str, names: Any) -> Any:
    from ..progress import Progress
    from ..rois import write_rois

    yield Progress(0, 1, "Tracing the objects' outlines...")
    return write_rois(dest, np.asarray(labels), names)


def _segment_work(path: str, data: Any, rgb: bool, tile: int, device: str, z: int | None = None) -> Any:
    """In the worker: copy the layer's data (slice ``z`` of it), segment, and make the result layers
    ready (:func:`prepare_result`), so the GUI thread only adds them."""
    model = load_model(path)
    full_shape = None
    if z is not None:
        full_shape = tuple(data.shape[: data.ndim - int(rgb)])
        data = data[z]
    if is_lazy(data) and data.size > BIG_LAYER_VALUES:  # a big dask/zarr layer: block by block into zarr
        seg = yield from segment_to_zarr(model, data, rgb=rgb, tile=tile, device=device)
    else:
        data = np.array(data)  # a copy, taken here rather than on the GUI thread
        seg = yield from segment(model, data, rgb=rgb, tile=tile, device=device)
    parts = []
    for role, labels in (("semantic", seg.semantic), ("instances", seg.instances)):
        if labels is not None:
            feats = seg.features if role == "instances" else None
            parts.append(prepare_result(labels, model.card, role, feats, full_shape, z))
    return parts, model.card


class SegmentWidget(Container):
    """Run a trained model over the selected 2D image or 3D volume.

    The result is always a new Labels layer ``"<image> · <model>"``; nothing existing is overwritten.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="Image", choices=lambda _w: layer_choices(viewer, napari.layers.Image))
        self.model = ComboBox(label="Model", choices=_model_choices)
        self.model.native.setSizeAdjustPolicy(self.model.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.native.setMinimumContentsLength(24)
        self.info = wrapped_label()
        self.ask = lambda question: ask(self.native, "Convert the image?", question)
        self.tile = SpinBox(
            label="Tile (px)",
            value=512,
            min=64,
            max=4096,
            step=64,
            tooltip="Images larger than this run in overlapping, blended tiles.",
        )
        self.device = ComboBox(
            label="Device", choices=DEVICES, value="auto", tooltip="auto: CUDA GPU, then Apple GPU, then CPU"
        )
        self.current_slice = CheckBox(
            text="Current slice", value=False, tooltip="Volumes: segment only the slice in view"
        )
        self.rois_btn = PushButton(
            text="Save ROIs…", tooltip="Write the selected objects layer as an ImageJ/Fiji ROI set (.zip)"
        )
        self.controls = RunControls("Segment", self.run)
        self.rename_btn = PushButton(text="Rename…")
        self.delete_btn = PushButton(text="Delete…")
        self.export_btn = PushButton(text="Export…")
        self.import_btn = PushButton(text="Import…")
        store_row = Container(
            widgets=[self.rename_btn, self.delete_btn, self.export_btn, self.import_btn, self.rois_btn],
            layout="horizontal",
            labels=False,
        )
        self.form = Container(
            widgets=[
                self.image,
                self.model,
                self.info,
                store_row,
                # one row: the three docks fit a laptop screen
                Container(widgets=[self.tile, self.device, self.current_slice], layout="horizontal"),
            ]
        )
        # short enough for any screen (about 300 px): no scroll area; the run controls sit under the form
        super().__init__(widgets=[self.form, self.controls], labels=False)
        from qtpy.QtWidgets import QSizePolicy

        # no taller than it needs: the height left goes to the Fine-tune dock below it
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.image.changed.connect(lambda _=None: self._fit_picker())
        self.model.changed.connect(lambda _=None: self._show_info())
        self.rename_btn.changed.connect(lambda _=None: self._ask_rename())
        self.delete_btn.changed.connect(lambda _=None: self.delete_selected(confirm=self._confirm))
        self.export_btn.changed.connect(lambda _=None: self._ask_export())
        self.import_btn.changed.connect(lambda _=None: self._ask_import())
        self.rois_btn.changed.connect(lambda _=None: self._ask_rois())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self.image.reset_choices())
        on_models_changed(self, self._on_models_changed)
        self._fit_picker()

    def _on_models_changed(self, path: str) -> None:
        self.model.reset_choices()
        if path in list(self.model.choices):
            self.model.value = path
        self._show_info()

    def _fit_picker(self) -> None:
        """Keep a model that takes the chosen image as it is (an RGB model for an RGB image, ...)."""
        image, m = self.image.value, self._selected()
        if image is not None and m is not None and not _fits(m, image):
            better = next((o for o in list_models() if _fits(o, image)), None)
            if better is not None:
                self.model.value = str(better.path)
        self._show_info()

    def _show_info(self) -> None:
        """Under the picker: the model's classes, and what does not fit the chosen image."""
        m, image = self._selected(), self.image.value
        if m is None:
            self.info.value = ""
            return
        card = m.card
        line = f"Classes: {', '.join(card.class_names)}; takes {'RGB' if card.in_channels > 1 else 'grey'} "
        line += "volumes (3D)." if card.spatial_dims == 3 else "images."
        if image is not None:
            shape = tuple(image.data[0].shape if image.multiscale else image.data.shape)
            conv = channel_conversion(card.in_channels, shape, bool(image.rgb))
            if conv is not None:
                line += " " + fit_note(m.name, image.name, conv)
            elif not _fits(m, image):
                line += f" '{image.name}' is 2D: pick a 2D model."
        self.info.value = line

    def run(self) -> Any:
        """Start segmenting; returns the worker (or ``None`` when the input is not usable or a run is going)."""
        if self.controls.busy():
            return None
        image, m = self.image.value, self._selected()
        if image is None:
            return self.controls.refuse("Open an image first: there is no image layer to segment.")
        if m is None:
            return self.controls.refuse(
                "No trained model yet: train one in the Fine-tune widget or with 'segsuite train'."
            )
        data = layer_data(image)  # not copied here: the worker copies it (a dask or zarr layer stays lazy)
        spatial_ndim = data.ndim - (1 if image.rgb else 0)
        z = None
        if self.current_slice.value and spatial_ndim == 3:
            if m.card.spatial_dims == 3:
                return self.controls.refuse(
                    f"'{m.name}' is a 3D model: it segments the whole volume; untick 'Current slice'."
                )
            z = current_slice(self._viewer, image)
        shape = tuple(data.shape[1:] if z is not None else data.shape)
        try:
            note = check_fit(
                m.name, m.card.in_channels, m.card.spatial_dims, image.name, shape, bool(image.rgb), self.ask
            )
        except ValueError as err:
            return self.controls.refuse(str(err))
        params = {"tile": self.tile.value, "device": self.device.value, "slice": z, "converted": note or None}

        def done(result: tuple) -> None:
            parts, card = result
            if image not in self._viewer.layers:
                self.controls.status.value = f"Image layer '{image.name}' was removed during the run: no result added."
                return
            run_id = uuid.uuid4().hex[:12]
            names = []
            for part in parts:
                layer = add_result(
                    self._viewer,
                    part.labels,
                    image,
                    card,
                    params,
                    role=part.role,
                    run_id=run_id,
                    objects_suffix=part.role == "instances" and len(parts) > 1,
                    table=part.table,
                    layer=part.layer,
                )
                names.append(f"'{layer.name}'")
            said = f" ({note})" if note else ""
            self.controls.status.value = f"Done: new layer{'s' if len(names) > 1 else ''} {' and '.join(names)}{said}."

        self.controls.watch(
            self._viewer,
            [image],
            lambda la: self.controls.stop(f"Stopped: image layer '{la.name}' was removed during the run; no result."),
        )
        worker = self.controls.launch(
            _segment_work,
            self.model.value,
            data,
            bool(image.rgb),
            self.tile.value,
            self.device.value,
            z,
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, p.note),
            on_done=done,
        )
        if note:
            self.controls.status.value = f"Segmenting: {note}."
        return worker

    # --- the model store: rename, delete, export, import ---
    def _selected(self) -> Any:
        path = self.model.value
        return next((m for m in list_models() if str(m.path) == path), None)

    def _refuse_builtin(self, m: Any) -> bool:
        if m is None:
            self.controls.refuse("Pick a trained model first.")
            return True
        if m.builtin:
            self.controls.refuse(f"'{m.name}' ships with the plugin; it cannot be renamed or deleted.")
            return True
        return False

    def rename_selected(self, new_name: str) -> Path | None:
        m = self._selected()
        if self._refuse_builtin(m) or not new_name.strip():
            return None
        try:
            path = rename_model(m.name, new_name)
        except (ValueError, FileNotFoundError) as err:
            self.controls.refuse(str(err))
            return None
        store_events.models_changed.emit(str(path))
        return path

    def delete_selected(self, confirm: Any) -> bool:
        """Delete the selected model if ``confirm(question)`` says yes."""
        m = self._selected()
        if self._refuse_builtin(m) or not confirm(f"Delete model '{m.name}' ({m.path})? This cannot be undone."):
            return False
        delete_model(m.name)
        store_events.models_changed.emit("")
        self.controls.status.value = f"Deleted '{m.name}'."
        return True

    def export_selected(self, dest: str | Path, fmt: str = "segsuite") -> Any:
        """Export the selected model: a ``.segsuite.zip`` at once (returns the file), or a bioimage.io
        package, ONNX or TorchScript file in a worker (returns the worker)."""
        if self._selected() is None:
            self.controls.refuse("Pick a trained model first.")
            return None
        if fmt != "segsuite":
            from ..export import check_exportable

            try:
                check_exportable(self._selected_model(), fmt)
            except ValueError as err:
                return self.controls.refuse(str(err))
            done = lambda r: self.controls.status.__setattr__("value", f"Exported: {r.summary()}")  # noqa: E731
            return self.controls.launch(
                _export_work, self.model.value, fmt, str(dest), on_yield=self._progress, on_done=done
            )
        out = export_model(self.model.value, dest)
        self.controls.status.value = f"Exported to {out}"
        return out

    def _selected_model(self) -> Any:
        from types import SimpleNamespace

        m = self._selected()
        return SimpleNamespace(name=m.name, card=m.card)

    def _progress(self, p: Any) -> None:
        self.controls.show_progress(p.step, p.total, p.note)

    def objects_layer(self) -> Any:
        """The Labels layer whose ROIs *Save ROIs* writes: the selected one, else the newest objects result."""
        active = self._viewer.layers.selection.active
        if isinstance(active, napari.layers.Labels):
            return active
        results = [la for la in self._viewer.layers if isinstance(la, napari.layers.Labels)]
        return results[-1] if results else None

    def save_rois(self, dest: str | Path) -> Any:
        """Write the objects of :meth:`objects_layer` as an ImageJ ROI set in a worker (returns it)."""
        layer = self.objects_layer()
        if layer is None:
            return self.controls.refuse("Segment with an instance model first: there is no Labels layer to outline.")
        from ..rois import object_names

        feats = layer.features
        names = object_names({k: feats[k].to_numpy() for k in feats.columns}) if len(feats) else None
        done = lambda p: self.controls.status.__setattr__(  # noqa: E731
            "value", f"Saved ROIs of '{layer.name}' to {p}" if p else f"'{layer.name}' holds no object: no ROIs."
        )
        return self.controls.launch(
            _rois_work, layer_data(layer), str(dest), names, on_yield=self._progress, on_done=done
        )

    def import_file(self, file: str | Path) -> Path | None:
        try:
            path = import_model(file)
        except ValueError as err:
            self.controls.refuse(str(err))
            return None
        store_events.models_changed.emit(str(path))
        self.controls.status.value = f"Imported '{path.name}'."
        return path

    def _confirm(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self.native, "Delete model", question)
        return answer == QMessageBox.StandardButton.Yes

    def _ask_rename(self) -> None:
        from qtpy.QtWidgets import QInputDialog

        m = self._selected()
        if self._refuse_builtin(m):
            return
        name, ok = QInputDialog.getText(self.native, "Rename model", "New name:", text=m.name)
        if ok:
            self.rename_selected(name)

    def _ask_export(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        m = self._selected()
        if m is None:
            self.controls.refuse("Pick a trained model first.")
            return
        dest, chosen = QFileDialog.getSaveFileName(
            self.native, "Export model", f"{m.name}.segsuite.zip", ";;".join(f for f, _ in EXPORT_FILTERS)
        )
        if dest:
            self.export_selected(dest, dict(EXPORT_FILTERS).get(chosen, "segsuite"))

    def _ask_rois(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        layer = self.objects_layer()
        name = f"{layer.name if layer is not None else 'objects'}_rois.zip".replace(" · ", "_")
        dest, _ = QFileDialog.getSaveFileName(self.native, "Save ROIs (ImageJ/Fiji)", name, "ROI sets (*.zip)")
        if dest:
            self.save_rois(dest)

    def _ask_import(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        file, _ = QFileDialog.getOpenFileName(self.native, "Import model", "", "segsuite models (*.zip)")
        if file:
            self.import_file(file)
