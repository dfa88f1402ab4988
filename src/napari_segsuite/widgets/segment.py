"""The *Segment* dock widget: pick a trained model and an image layer, get a new Labels layer."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, SpinBox
from napari.utils.notifications import show_error

from ..inference import segment
from ..io import load_model
from ..store import list_models
from ._common import RunControls
from ._events import on_models_changed
from ._layers import add_result, layer_array, layer_choices

DEVICES = ["auto", "cpu", "cuda", "mps"]


def _segment_work(path: str, data: Any, rgb: bool, tile: int, device: str):
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
        self.tile = SpinBox(label="Tile (px)", value=512, min=64, max=4096, step=64,
                            tooltip="Images larger than this run in overlapping, blended tiles.")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto",
                               tooltip="auto: CUDA GPU, then Apple GPU, then CPU")
        self.current_slice = CheckBox(text="Only the current slice (volumes)", value=False)
        self.controls = RunControls("Segment", self.run)
        super().__init__(widgets=[self.image, self.model, self.tile, self.device, self.current_slice, self.controls])
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self.image.reset_choices())
        on_models_changed(self, self._on_models_changed)

    def _on_models_changed(self, path: str) -> None:
        self.model.reset_choices()
        if path in [c for c in self.model.choices]:
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
                layer = add_result(self._viewer, labels, image, card, params, features=feats, role=role, run_id=run_id)
                names.append(f"'{layer.name}'")
            self.controls.status.value = f"Done: new layer{'s' if len(names) > 1 else ''} {' and '.join(names)}."

        return self.controls.launch(
            _segment_work, self.model.value, data, bool(image.rgb), self.tile.value, self.device.value,
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, p.note), on_done=done,
        )
