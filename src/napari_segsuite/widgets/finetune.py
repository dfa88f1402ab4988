"""The *Fine-tune* dock widget: train on image/labels layer pairs from the viewer, live loss, cancel.

The new model is saved to the user's model folder (as it improves, so cancel or a crash keeps the
best so far) and appears in the Segment widget's picker at once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton,
                               SpinBox, Table)
from qtpy.QtCore import QTimer
from napari.utils.notifications import show_error

from ..io import save_model
from ..models import available, get_spec
from ..preprocess import infer_axes
from ..project import Project
from ..inference import segment
from ..io import load_model
from .. import store
from ..store import delete_model, list_models, new_model_path
from ..training import SCORE_NAMES, TrainConfig, score_of, train
from ..workflows import model_for_training
from ._common import RunControls
from ._events import on_models_changed, store_events
from ._layers import add_result, layer_array, layer_choices, partner_layer
from .plot import TrainingPlot


STOP_REASONS = {"epochs": "epoch limit reached", "time budget": "time limit reached",
                "early stopping": "stopped early: no more improvement", "cancelled": "cancelled, best so far kept"}


def _finetune_work(spec: str, images: list, labels: list, names: list, rgb: bool, cfg: TrainConfig,
                   out: str, cancel: threading.Event, sparse: bool = False, instances: list | None = None,
                   things: list[int] | None = None):
    extra = {"things": things} if things else {}
    model = model_for_training(spec, images, labels, rgb=rgb, sparse=sparse, instances=instances, **extra)
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


def _is_object_model(base: str) -> bool:
    """Whether the base is an object model (Mask R-CNN, SOLO, DeepMask), which can learn a class per object."""
    if base in {s.name for s in available()}:
        return get_spec(base).objects
    card = next((m.card for m in list_models() if str(m.path) == base), {})
    return card.get("architecture") in {s.name for s in available("instance") if s.objects}


def _class_image(layer: napari.layers.Labels, ids: np.ndarray) -> np.ndarray | None:
    """Class values per pixel from an instance layer's ``features`` (``index`` -> ``class``), or ``None``
    when the layer has no class table or only one class. Objects the user painted with a new id take
    the most common class."""
    table = getattr(layer, "features", None)
    if table is None or "class" not in table or "index" not in table or table["class"].nunique() < 2:
        return None
    cls = dict(zip(table["index"].astype(int), table["class"].astype(int)))
    common = int(table["class"].mode().iloc[0])
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    for i in range(1, len(lut)):
        lut[i] = cls.get(i, common)
    return lut[ids]


PAIR_COLUMNS = ("image", "labels", "objects", "size", "annotated")


class FinetuneWidget(Container):
    """Train a new model, or fine-tune a trained one, on image/labels pairs from the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.project_dir = FileEdit(label="Project", mode="d", value="",
                                    tooltip="A folder for the training set, its labels and the models trained on "
                                            "it, saved as you work. Empty: no project.")
        self.open_project_btn = PushButton(text="Open / create project")
        self.project: Project | None = None
        self._pair_names: dict[int, str] = {}  # id(labels layer) -> pair name in the project
        self._save_timer = QTimer()
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(800)
        self._save_timer.timeout.connect(self._save_dirty)
        self._dirty: set[int] = set()
        self.image = ComboBox(label="Image", choices=lambda _w: layer_choices(viewer, napari.layers.Image))
        self.labels_layer = ComboBox(label="Labels", choices=lambda _w: layer_choices(viewer, napari.layers.Labels))
        self.objects = ComboBox(
            label="Objects", choices=lambda _w: [("auto", None), *layer_choices(viewer, napari.layers.Labels)],
            tooltip="Panoptic models: the object-id layer that goes with the class labels. auto: the one made with "
                    "it by Segment, else each connected region of a thing class is one object.")
        self.add_btn = PushButton(text="Add pair")
        self.remove_btn = PushButton(text="Remove selected")
        self.folder_btn = PushButton(text="Add folders…", tooltip="Open image/label pairs from two folders "
                                     "(matched by file name) as layers and add them to the set.")
        self.pairs = Table(value={"data": [], "index": [], "columns": list(PAIR_COLUMNS)}, label="Training set",
                           tooltip="Image/labels pairs to train on (empty: the pair above). Select rows and "
                                   "'Remove selected' to drop them; annotated = share of non-zero label pixels.")
        self.pairs.read_only = True
        self.pairs.min_height = 110
        self.base = ComboBox(label="Start from", choices=_base_choices)
        self.guide = Label(value="")
        self.guide.native.setWordWrap(True)
        self.things = LineEdit(label="Thing classes", value="", visible=False,
                               tooltip="Panoptic models: label values of the countable classes, e.g. 2, 3. "
                                       "Empty: the classes under objects, else every class but 0 (stuff: the rest).")
        self.sparse = CheckBox(text="Sparse labels: 0 = not annotated (paint background as a class)", value=False)
        self.freeze = CheckBox(text="Freeze encoder (train the decoder only: very few images)", value=False)
        self.epochs = SpinBox(label="Epochs", value=30, min=1, max=10000)
        self.minutes = FloatSpinBox(label="Time limit (min)", value=5.0, min=0.0, max=10000.0, step=0.5,
                                    tooltip="0 = no limit. Training stops here and keeps the best model.")
        self.model_name = LineEdit(label="New model name", value="")
        self.controls = RunControls("Train", self.run)
        self.verdict = Label(value="")
        self.verdict.native.setWordWrap(True)
        self.keep_parent_btn = PushButton(text="Keep parent (discard new)", visible=False)
        self.next_btn = PushButton(text="Segment next image", enabled=False,
                                   tooltip="Run the new model on the next image not yet in the set; correct it, "
                                           "add the pair, train again (continuing from the new model).")
        self.plot = TrainingPlot()
        self._pairs: list[tuple[napari.layers.Image, napari.layers.Labels, napari.layers.Labels | None]] = []
        self._cancel = threading.Event()
        self.last_result: Any = None
        self.last_path: str | None = None
        super().__init__(widgets=[
            Container(widgets=[self.project_dir, self.open_project_btn]),
            self.image, self.labels_layer, self.objects,
            Container(widgets=[self.add_btn, self.folder_btn, self.remove_btn], layout="horizontal", labels=False),
            self.pairs, self.base, self.guide, self.things, self.sparse, self.freeze, self.epochs, self.minutes, self.model_name, self.controls,
            self.verdict, Container(widgets=[self.keep_parent_btn, self.next_btn], layout="horizontal", labels=False),
            self.plot,
        ])
        self.keep_parent_btn.changed.connect(lambda _=None: self.keep_parent())
        self.next_btn.changed.connect(lambda _=None: self.segment_next())
        self.next_worker: Any = None
        if "unet" in [c for c in self.base.choices]:
            self.base.value = "unet"  # the small-data default
        self.base.changed.connect(lambda _=None: self._show_guide())
        self.base.changed.connect(lambda _=None: setattr(self.things, "visible", self._is_new_panoptic()))
        self._show_guide()
        self.add_btn.changed.connect(lambda _=None: self.add_pair())
        self.open_project_btn.changed.connect(lambda _=None: self.open_project(self.project_dir.value))
        self.remove_btn.changed.connect(lambda _=None: self._remove_selected())
        self.folder_btn.changed.connect(lambda _=None: self._ask_folders())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self._on_layers_changed())
        on_models_changed(self, self._on_models_changed)

    def _is_new_panoptic(self) -> bool:
        v = self.base.value
        return v is not None and v in {s.name for s in available("panoptic")}

    def _thing_values(self) -> list[int] | None:
        text = self.things.value.strip()
        if not text or not self._is_new_panoptic():
            return None
        return [int(v) for v in text.replace(" ", "").split(",") if v]

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
        if self.project is not None:
            self._track(image, labels, objects, None)
        return True

    def _pair_label(self, pair: tuple) -> str:
        return f"{pair[0].name} + {pair[1].name}" + (f" + {pair[2].name}" if pair[2] is not None else "")

    def pair_rows(self) -> list[list[str]]:
        """The training-set table: image, labels, objects, size and annotated share per pair."""
        rows = []
        for image, labels, objects in self._pairs:
            data = labels.data[0] if getattr(labels, "multiscale", False) else labels.data
            rows.append([image.name, labels.name, objects.name if objects is not None else "",
                         "x".join(map(str, data.shape)), f"{float((np.asarray(data) != 0).mean()):.0%}"])
        return rows

    def _refresh_pairs(self) -> None:
        rows = self.pair_rows()
        self.pairs.value = {"data": rows, "index": list(range(1, len(rows) + 1)), "columns": list(PAIR_COLUMNS)}

    def _remove_selected(self, rows: list[int] | None = None) -> None:
        if rows is None:
            rows = [i.row() for i in self.pairs.native.selectionModel().selectedRows()]
        drop = set(rows)
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
        try:
            self._thing_values()
        except ValueError:
            show_error(f"Thing classes must be label values separated by commas (e.g. 2, 3), not {self.things.value!r}.")
            return None
        images = [layer_array(p[0]) for p in pairs]
        labels = [layer_array(p[1]) for p in pairs]
        names = [self._pair_label(p) for p in pairs]
        instances = None
        if _kind_of(self.base.value) == "panoptic":
            instances = [None if p[2] is None else layer_array(p[2]) for p in pairs]
        elif _is_object_model(self.base.value):  # a class per object, from the layers' features tables
            classes = [_class_image(p[1], lab) for p, lab in zip(pairs, labels)]
            if all(c is not None for c in classes):
                instances, labels = labels, classes
        base_name = Path(self.base.value).name
        name = self.model_name.value.strip() or f"{pairs[0][0].name}-{base_name}"
        out = str(new_model_path(name, self.project.models_dir if self.project is not None else None))
        cfg = TrainConfig(epochs=self.epochs.value, time_budget=self.minutes.value * 60 or None,
                          freeze_encoder=self.freeze.value)
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
            self._show_verdict(res.model.card)
            if self.project is not None:
                self.project.add_model(path)
            store_events.models_changed.emit(path)
            if path in [c for c in self.base.choices]:
                self.base.value = path  # the next round continues from the new model
            self.next_btn.enabled = True

        return self.controls.launch(
            _finetune_work, self.base.value, images, labels, names, rgbs.pop(), cfg, out, self._cancel, self.sparse.value,
            instances, self._thing_values(), on_yield=on_yield, on_done=done, on_cancel=self._cancel.set,
        )

    # --- after training: did it get better, and the next round ---
    def _show_verdict(self, card: dict) -> None:
        """Parent and new model scored on the same validation images, side by side."""
        c = card.get("comparison")
        self.keep_parent_btn.visible = False
        if not c:
            self.verdict.value = ""
            return
        line = (f"{c['metric']} on the same validation images ({c['validation']}): "
                f"new {c['new']:.3f} vs parent '{c['parent_name']}' {c['parent']:.3f}")
        if c["better"]:
            self.verdict.value = f"Better: {line}."
        else:
            self.verdict.value = f"Worse than the parent: {line}. You can keep the parent instead."
            self.keep_parent_btn.visible = True

    def keep_parent(self) -> None:
        """Discard the new (worse) model and go back to its parent in both widgets."""
        if self.last_path is None or self.last_result is None:
            return
        c = self.last_result.model.card.get("comparison") or {}
        delete_model(Path(self.last_path).name)
        self.keep_parent_btn.visible = False
        self.verdict.value = f"Kept '{c.get('parent_name')}'; the new model was deleted."
        self.last_path = None
        store_events.models_changed.emit(c.get("parent_path") or "")
        if c.get("parent_path") in [v for v in self.base.choices]:
            self.base.value = c["parent_path"]

    def _next_image(self) -> Any:
        used = {id(p[0]) for p in self._pairs} | {id(self.image.value)}
        return next((la for la in self._viewer.layers if isinstance(la, napari.layers.Image) and id(la) not in used), None)

    def segment_next(self) -> Any:
        """Segment the next image not yet in the training set with the model just trained."""
        if self.last_path is None:
            show_error("Train a model first.")
            return None
        image = self._next_image()
        if image is None:
            show_error("No image left that is not already in the training set; open the next image first.")
            return None
        if self._pairs == [] and self.image.value is not None and self.labels_layer.value is not None:
            self.add_pair()  # the pair just trained on stays in the set
        path = self.last_path

        def work(data: Any, rgb: bool):
            model = load_model(path)
            result = yield from segment(model, data, rgb=rgb)
            return result, model.card

        def done(result: tuple) -> None:
            seg, card = result
            layer = add_result(self._viewer, seg.labels, image, card, {"round": "segment next"},
                               features=seg.features if seg.semantic is None else None)
            self.image.value = image
            self.labels_layer.reset_choices()
            self.labels_layer.value = layer
            self.controls.status.value = f"Correct '{layer.name}', then Add pair and Train again."

        self.next_worker = self.controls.launch(
            work, layer_array(image), bool(image.rgb),
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, p.note), on_done=done,
        )
        return self.next_worker

    # --- project folder: the set, its labels and its models, saved as the user works ---
    def open_project(self, folder: Any) -> Project | None:
        """Open (or create) a project folder: its saved pairs come back as layers in the set, pairs in the
        set now are saved into it, and from then on every edit of their labels is saved (within a second)."""
        if not folder or str(folder) in ("", "."):
            show_error("Choose a folder for the project first.")
            return None
        try:
            project = Project(folder)
        except ValueError as err:
            show_error(str(err))
            return None
        self.project = project
        store.EXTRA_DIRS[:] = [project.models_dir]
        for pair in project.pairs():
            image = self._viewer.add_image(pair.image, name=pair.name)
            labels = self._viewer.add_labels(pair.labels, name=f"{pair.name} labels")
            objects = self._viewer.add_labels(pair.objects, name=f"{pair.name} objects") if pair.objects is not None else None
            self._pairs.append((image, labels, objects))
            self._track(image, labels, objects, pair.name)
        for image, labels, objects in list(self._pairs):
            if id(labels) not in self._pair_names:
                self._track(image, labels, objects, None)
        self._refresh_pairs()
        self.base.reset_choices()
        store_events.models_changed.emit("")
        self.controls.status.value = f"Project '{project.folder.name}': {len(project.names())} pairs, saved as you edit."
        return project

    def _track(self, image: Any, labels: Any, objects: Any, name: str | None) -> None:
        """Save a pair into the open project (when new) and save its labels again on every edit."""
        assert self.project is not None
        if name is None:
            name = self.project.add_pair(image.name, layer_array(image), layer_array(labels),
                                         None if objects is None else layer_array(objects))
        self._pair_names[id(labels)] = name
        for layer in (labels, objects):
            if layer is not None:
                layer.events.paint.connect(lambda _=None, lab=labels: self._mark_dirty(lab))

    def _mark_dirty(self, labels: Any) -> None:
        self._dirty.add(id(labels))
        self._save_timer.start()

    def _save_dirty(self) -> None:
        if self.project is None:
            return
        for image, labels, objects in self._pairs:
            if id(labels) in self._dirty and id(labels) in self._pair_names:
                self.project.save_labels(self._pair_names[id(labels)], layer_array(labels),
                                         None if objects is None else layer_array(objects))
        self._dirty.clear()

    # --- pairs from folders ---
    def add_folders(self, images: str | Path, labels: str | Path) -> int:
        """Open every image of ``images`` with its label file from ``labels`` (matched by name, as the
        CLI does) as layers, and add the pairs to the set; returns how many were added."""
        from ..io import match_pairs, read_image, read_labels

        try:
            pairs = match_pairs(images, labels)
        except FileNotFoundError as err:
            show_error(str(err))
            return 0
        n = 0
        for img_path, lab_path in pairs:
            image = self._viewer.add_image(read_image(img_path), name=img_path.stem)
            lab = self._viewer.add_labels(read_labels(lab_path), name=f"{img_path.stem} labels")
            self.image.value, self.labels_layer.value = image, lab
            n += int(self.add_pair())
        return n

    def _ask_folders(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        images = QFileDialog.getExistingDirectory(self.native, "Folder of images")
        if not images:
            return
        labels = QFileDialog.getExistingDirectory(self.native, "Folder of their labels (same file names)")
        if labels:
            self.add_folders(images, labels)
