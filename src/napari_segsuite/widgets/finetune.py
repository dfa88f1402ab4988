"""The *Fine-tune* dock widget: train on image/labels layer pairs from the viewer, live loss, cancel.

The new model is saved to the user's model folder (as it improves, so cancel or a crash keeps the
best so far) and appears in the Segment widget's picker at once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, Select, SpinBox
from napari.utils.notifications import show_error

from ..io import save_model
from ..models import available, get_spec
from ..preprocess import infer_axes
from ..store import list_models, new_model_path
from ..training import SCORE_NAMES, TrainConfig, score_of, train
from ..workflows import model_for_training
from ._common import RunControls
from ._events import on_models_changed, store_events
from ._layers import layer_array, layer_choices, partner_layer
from .plot import TrainingPlot


STOP_REASONS = {"epochs": "epoch limit reached", "time budget": "time limit reached",
                "early stopping": "stopped early: no more improvement", "cancelled": "cancelled, best so far kept"}


def _finetune_work(spec: str, images: list, labels: list, names: list, rgb: bool, cfg: TrainConfig,
                   out: str, cancel: threading.Event, sparse: bool = False, instances: list | None = None):
    model = model_for_training(spec, images, labels, rgb=rgb, sparse=sparse, instances=instances)
    model.card["name"] = Path(out).name
    result = yield from train(model, images, labels, cfg, names=names, rgb=rgb, instances=instances,
                              cancel=cancel.is_set, checkpoint=out)
    save_model(result.model, out)
    return out, result


def _base_choices(_w: Any = None) -> list[tuple[str, str]]:
    archs = [(f"{s.name} (new, random weights)", s.name) for s in available()]
    return archs + [(m.label, str(m.path)) for m in list_models()]


def _kind_of(base: str) -> str:
    """The task of a base choice (an architecture name or a trained model's folder)."""
    if base in {s.name for s in available()}:
        return get_spec(base).kind
    return next((m.card.get("kind", "semantic") for m in list_models() if str(m.path) == base), "semantic")


class FinetuneWidget(Container):
    """Train a new model, or fine-tune a trained one, on image/labels pairs from the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="Image", choices=lambda _w: layer_choices(viewer, napari.layers.Image))
        self.labels_layer = ComboBox(label="Labels", choices=lambda _w: layer_choices(viewer, napari.layers.Labels))
        self.objects = ComboBox(
            label="Objects", choices=lambda _w: [("auto", None), *layer_choices(viewer, napari.layers.Labels)],
            tooltip="Panoptic models: the object-id layer that goes with the class labels. auto: the one made with "
                    "it by Segment, else each connected region of a thing class is one object.")
        self.add_btn = PushButton(text="Add pair")
        self.remove_btn = PushButton(text="Remove selected")
        self.pairs = Select(label="Pairs", choices=[], tooltip="Image/labels pairs to train on. Empty: the pair above.")
        self.base = ComboBox(label="Start from", choices=_base_choices)
        self.guide = Label(value="")
        self.guide.native.setWordWrap(True)
        self.sparse = CheckBox(text="Sparse labels: 0 = not annotated (paint background as a class)", value=False)
        self.epochs = SpinBox(label="Epochs", value=30, min=1, max=10000)
        self.minutes = FloatSpinBox(label="Time limit (min)", value=5.0, min=0.0, max=10000.0, step=0.5,
                                    tooltip="0 = no limit. Training stops here and keeps the best model.")
        self.model_name = LineEdit(label="New model name", value="")
        self.controls = RunControls("Train", self.run)
        self.plot = TrainingPlot()
        self._pairs: list[tuple[napari.layers.Image, napari.layers.Labels, napari.layers.Labels | None]] = []
        self._cancel = threading.Event()
        self.last_result: Any = None
        self.last_path: str | None = None
        super().__init__(widgets=[
            self.image, self.labels_layer, self.objects,
            Container(widgets=[self.add_btn, self.remove_btn], layout="horizontal", labels=False),
            self.pairs, self.base, self.guide, self.sparse, self.epochs, self.minutes, self.model_name, self.controls, self.plot,
        ])
        if "unet" in [c for c in self.base.choices]:
            self.base.value = "unet"  # the small-data default
        self.base.changed.connect(lambda _=None: self._show_guide())
        self._show_guide()
        self.add_btn.changed.connect(lambda _=None: self.add_pair())
        self.remove_btn.changed.connect(lambda _=None: self._remove_selected())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self._on_layers_changed())
        on_models_changed(self, self._on_models_changed)

    def _show_guide(self) -> None:
        """One line on what the chosen model is good for (the registry's description)."""
        value = self.base.value
        if value is None:
            self.guide.value = ""
            return
        try:
            arch = value if value in {s.name for s in available()} else None
            self.guide.value = get_spec(arch).description if arch else "Fine-tune this trained model (its classes stay)."
        except KeyError:
            self.guide.value = ""

    # --- pairs ---
    def _check_pair(self, image: Any, labels: Any, objects: Any = None) -> str | None:
        if image is None or labels is None:
            return "Pick an image layer and the Labels layer that belongs to it."
        axes = infer_axes(image.data.shape if not image.multiscale else image.data[0].shape, image.rgb)
        want = axes.spatial_shape(tuple(image.data.shape if not image.multiscale else image.data[0].shape))
        for layer in (labels, objects):
            got = None if layer is None else tuple(layer.data.shape)
            if got is not None and got != want:
                return (f"Labels layer '{layer.name}' is {'x'.join(map(str, got))} but image '{image.name}' is "
                        f"{'x'.join(map(str, want))}; pick the labels that belong to this image.")
        return None

    def _current(self) -> tuple:
        labels = self.labels_layer.value
        objects = self.objects.value
        if objects is None and labels is not None:
            objects = partner_layer(self._viewer, labels)
        if objects is labels:
            objects = None
        return self.image.value, labels, objects

    def add_pair(self) -> bool:
        image, labels, objects = self._current()
        problem = self._check_pair(image, labels, objects)
        if problem:
            show_error(problem)
            return False
        if any(p[0] is image and p[1] is labels for p in self._pairs):
            return True
        self._pairs.append((image, labels, objects))
        self._refresh_pairs()
        return True

    def _pair_label(self, pair: tuple) -> str:
        return f"{pair[0].name} + {pair[1].name}" + (f" + {pair[2].name}" if pair[2] is not None else "")

    def _refresh_pairs(self) -> None:
        self.pairs.choices = [(self._pair_label(p), i) for i, p in enumerate(self._pairs)]

    def _remove_selected(self) -> None:
        drop = set(self.pairs.value or [])
        self._pairs = [p for i, p in enumerate(self._pairs) if i not in drop]
        self._refresh_pairs()

    def _on_layers_changed(self) -> None:
        alive = set(map(id, self._viewer.layers))
        self._pairs = [p for p in self._pairs if id(p[0]) in alive and id(p[1]) in alive
                       and (p[2] is None or id(p[2]) in alive)]
        self._refresh_pairs()
        self.image.reset_choices()
        self.labels_layer.reset_choices()
        self.objects.reset_choices()

    def _on_models_changed(self, _path: str) -> None:
        self.base.reset_choices()

    # --- training ---
    def run(self) -> Any:
        """Start training; returns the worker (or ``None`` when the input is not usable)."""
        pairs = list(self._pairs)
        if not pairs:
            current = self._current()
            problem = self._check_pair(*current)
            if problem:
                show_error(problem)
                return None
            pairs = [current]
        rgbs = {bool(p[0].rgb) for p in pairs}
        if len(rgbs) > 1:
            show_error("Mix of RGB and grayscale images: train on one kind at a time.")
            return None
        if self.base.value is None:
            show_error("Pick a model to start from.")
            return None
        images = [layer_array(p[0]) for p in pairs]
        labels = [layer_array(p[1]) for p in pairs]
        names = [self._pair_label(p) for p in pairs]
        instances = None
        if _kind_of(self.base.value) == "panoptic":
            instances = [None if p[2] is None else layer_array(p[2]) for p in pairs]
        base_name = Path(self.base.value).name
        name = self.model_name.value.strip() or f"{pairs[0][0].name}-{base_name}"
        out = str(new_model_path(name))
        cfg = TrainConfig(epochs=self.epochs.value, time_budget=self.minutes.value * 60 or None)
        self._cancel.clear()

        kind = _kind_of(self.base.value)
        self.plot.metric_name = SCORE_NAMES.get(kind, "score")
        self.plot.reset()

        def on_yield(p: Any) -> None:
            self.controls.show_progress(p.step, p.total, p.note)
            self.plot.add(p)

        def done(result: tuple) -> None:
            path, res = result
            self.last_result, self.last_path = res, path
            sc = score_of(res.model.card)
            why = STOP_REASONS.get(res.stopped, res.stopped)
            score = f" · val {sc[0]} {sc[1]:.3f}" if sc else ""
            self.controls.status.value = f"Saved '{Path(path).name}'{score}"
            self.controls.status.tooltip = f"{path} ({why})"
            store_events.models_changed.emit(path)

        return self.controls.launch(
            _finetune_work, self.base.value, images, labels, names, rgbs.pop(), cfg, out, self._cancel, self.sparse.value,
            instances, on_yield=on_yield, on_done=done, on_cancel=self._cancel.set,
        )
