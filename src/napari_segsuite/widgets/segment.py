"""The *Segment* dock widget: pick a trained model and an image layer, get a new Labels layer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox
from napari.utils.notifications import show_error

from ..inference import segment
from ..model_files import load_model
from ..store import delete_model, export_model, import_model, list_models, rename_model
from ._common import RunControls
from ._events import on_models_changed, store_events
from ._layers import add_result, layer_array, layer_choices

DEVICES = ["auto", "cpu", "cuda", "mps"]


def _segment_work(path: str, data: Any, rgb: bool, tile: int, device: str) -> Any:
    model = load_model(path)
    result = yield from segment(model, data, rgb=rgb, tile=tile, device=device)
    return result, model.card


class SegmentWidget(Container):
    """Run a trained model over the selected 2D image or 3D volume.

    The result is always a new Labels layer ``"<image> · <model>"``; nothing existing is overwritten.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="Image", choices=lambda _w: layer_choices(viewer, napari.layers.Image))
        self.model = ComboBox(label="Model", choices=lambda _w: [(m.label, str(m.path)) for m in list_models()])
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
        self.current_slice = CheckBox(text="Only the current slice (volumes)", value=False)
        self.controls = RunControls("Segment", self.run)
        self.rename_btn = PushButton(text="Rename…")
        self.delete_btn = PushButton(text="Delete…")
        self.export_btn = PushButton(text="Export…")
        self.import_btn = PushButton(text="Import…")
        store_row = Container(
            widgets=[self.rename_btn, self.delete_btn, self.export_btn, self.import_btn],
            layout="horizontal",
            labels=False,
        )
        super().__init__(
            widgets=[self.image, self.model, store_row, self.tile, self.device, self.current_slice, self.controls]
        )
        self.rename_btn.changed.connect(lambda _=None: self._ask_rename())
        self.delete_btn.changed.connect(lambda _=None: self.delete_selected(confirm=self._confirm))
        self.export_btn.changed.connect(lambda _=None: self._ask_export())
        self.import_btn.changed.connect(lambda _=None: self._ask_import())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self.image.reset_choices())
        on_models_changed(self, self._on_models_changed)

    def _on_models_changed(self, path: str) -> None:
        self.model.reset_choices()
        if path in list(self.model.choices):
            self.model.value = path

    def run(self) -> Any:
        """Start segmenting; returns the worker (or ``None`` when the input is not usable)."""
        image = self.image.value
        if image is None:
            show_error("Open an image first: there is no image layer to segment.")
            return None
        if self.model.value is None:
            show_error("No trained model yet: train one in the Fine-tune widget or with 'segsuite train'.")
            return None
        data = layer_array(image)
        spatial_ndim = data.ndim - (1 if image.rgb else 0)
        z = None
        if self.current_slice.value and spatial_ndim == 3:
            z = int(self._viewer.dims.current_step[0])
            data = data[z]
        params = {"tile": self.tile.value, "device": self.device.value, "slice": z}

        def done(result: tuple) -> None:
            seg, card = result
            run_id = uuid.uuid4().hex[:12]
            names = []
            for role, labels in (("semantic", seg.semantic), ("instances", seg.instances)):
                if labels is None:
                    continue
                if z is not None:  # a full-size layer holding the one segmented slice
                    full = np.zeros((layer_array(image).shape[0], *labels.shape), labels.dtype)
                    full[z] = labels
                    labels = full
                feats = seg.features if role == "instances" else None
                layer = add_result(
                    self._viewer,
                    labels,
                    image,
                    card,
                    params,
                    features=feats,
                    role=role,
                    run_id=run_id,
                    objects_suffix=role == "instances" and seg.semantic is not None,
                )
                names.append(f"'{layer.name}'")
            self.controls.status.value = f"Done: new layer{'s' if len(names) > 1 else ''} {' and '.join(names)}."

        return self.controls.launch(
            _segment_work,
            self.model.value,
            data,
            bool(image.rgb),
            self.tile.value,
            self.device.value,
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, p.note),
            on_done=done,
        )

    # --- the model store: rename, delete, export, import ---
    def _selected(self) -> Any:
        path = self.model.value
        return next((m for m in list_models() if str(m.path) == path), None)

    def _refuse_builtin(self, m: Any) -> bool:
        if m is None:
            show_error("Pick a trained model first.")
            return True
        if m.builtin:
            show_error(f"'{m.name}' ships with the plugin; it cannot be renamed or deleted.")
            return True
        return False

    def rename_selected(self, new_name: str) -> Path | None:
        m = self._selected()
        if self._refuse_builtin(m) or not new_name.strip():
            return None
        try:
            path = rename_model(m.name, new_name)
        except (ValueError, FileNotFoundError) as err:
            show_error(str(err))
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

    def export_selected(self, dest: str | Path) -> Path | None:
        if self._selected() is None:
            show_error("Pick a trained model first.")
            return None
        out = export_model(self.model.value, dest)
        self.controls.status.value = f"Exported to {out}"
        return out

    def import_file(self, file: str | Path) -> Path | None:
        try:
            path = import_model(file)
        except ValueError as err:
            show_error(str(err))
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
            show_error("Pick a trained model first.")
            return
        dest, _ = QFileDialog.getSaveFileName(
            self.native, "Export model", f"{m.name}.segsuite.zip", "segsuite models (*.segsuite.zip)"
        )
        if dest:
            self.export_selected(dest)

    def _ask_import(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        file, _ = QFileDialog.getOpenFileName(self.native, "Import model", "", "segsuite models (*.zip)")
        if file:
            self.import_file(file)
