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
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_info

from ..annotate.uncertainty import segment_most_uncertain
from ..card import ModelCard
from ..checks import check_labels_vary
from ..io import fixed_orientation
from ..lazy_io import is_lazy
from ..model_files import load_model
from ..models import available, get_spec
from ..store import delete_model, release_model_path, reserve_model_path
from ..tasks import score_of
from ..training import TrainConfig
from ..workflows import train_model
from ._choices import _base_choices, _card_of, _class_image, _is_object_model, _takes, _task_of, guide_text, plan_text
from ._common import RunControls, ask, check_fit, fits_as_is, os_error_text, row, scroll_above, wrapped_label
from ._events import on_models_changed, store_events
from ._layers import add_result, layer_array, layer_data, prepare_result
from .class_names import ClassNames
from .plot import TrainingPlot
from .training_set import TrainingSet

STOP_REASONS = {
    "epochs": "epoch limit reached",
    "time budget": "time limit reached",
    "early stopping": "stopped early: no more improvement",
    "cancelled": "cancelled, best so far kept",
}


def _finetune_work(
    spec: str,
    images: list[Any],
    labels: list[Any],
    names: list[str],
    rgb: bool,
    cfg: TrainConfig,
    out: str,
    cancel: threading.Event,
    sparse: bool = False,
    instances: list[Any] | None = None,
    things: list[int] | None = None,
    class_names: dict[int, str] | None = None,
) -> Any:
    images = [np.array(im) for im in images]  # copied here, off the GUI thread (labels were copied at the click)
    try:
        kw: dict[str, Any] = {"names": names, "rgb": rgb, "sparse": sparse, "instances": instances}
        kw |= {"things": things, "class_names": class_names, "cancel": cancel.is_set}
        result = yield from train_model(spec, images, labels, cfg, out, **kw)
    finally:
        release_model_path(out)  # the reserved folder, if no model was saved into it
    return out, result


class FinetuneWidget(Container):
    """Train a new model, or fine-tune a trained one, on image/labels pairs from the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.trainset = TrainingSet(viewer, on_status=lambda text: setattr(self.controls.status, "value", text))
        self.base = ComboBox(label="Start from", choices=_base_choices)
        self.guide = wrapped_label()
        self.things = LineEdit(
            label="Thing classes",
            value="",
            visible=False,
            tooltip="Panoptic models: label values of the countable classes, e.g. 2, 3. "
            "Empty: the classes under objects, else every class but 0 (stuff: the rest).",
        )
        self.sparse = CheckBox(
            text="Sparse labels: 0 = not annotated",
            value=False,
            tooltip="Label value 0 means 'not annotated' and is ignored; paint background as a class of its own.",
        )
        self.freeze = CheckBox(
            text="Freeze encoder (very few images)",
            value=False,
            tooltip="Train the decoder only: for fine-tuning on very few images.",
        )
        self.epochs = SpinBox(label="Epochs", value=30, min=1, max=10000)
        self.minutes = FloatSpinBox(
            label="Time limit (min)",
            value=5.0,
            min=0.0,
            max=10000.0,
            step=0.5,
            tooltip="0 = no limit. Training stops here and keeps the best model.",
        )
        self.model_name = LineEdit(label="New model name", value="")
        self.class_names = ClassNames(
            say=lambda text: setattr(self.controls.status, "value", text),
            refuse=lambda text: self.controls.refuse(text),
        )
        self.ask = lambda question: ask(self.native, "Convert the images?", question)
        self.controls = RunControls("Train", self.run)
        self.verdict = wrapped_label()
        self.plan_note = wrapped_label()  # the training plan, before Train is pressed
        self.keep_parent_btn = PushButton(text="Keep parent (discard new)", visible=False)
        self.next_btn = PushButton(
            text="Segment next image",
            enabled=False,
            tooltip="Run the new model on the next image not yet in the set; correct it, "
            "add the pair, train again (continuing from the new model).",
        )
        self.plot = TrainingPlot(theme=str(viewer.theme))
        viewer.events.theme.connect(lambda _=None: self.plot.set_theme(str(viewer.theme)))
        self._cancel = threading.Event()
        self.last_result: Any = None
        self.last_path: str | None = None
        self.form = Container(
            widgets=[
                self.trainset,
                self.base,
                self.guide,
                self.things,
                self.class_names,
                self.sparse,
                self.freeze,
                self.epochs,
                self.minutes,
                self.model_name,
                self.plan_note,
                self.plot,
            ]
        )
        # the form scrolls; what a run needs (Train, Cancel, progress, status, verdict) stays below it
        super().__init__(
            widgets=[
                self.controls,
                self.verdict,
                row(self.keep_parent_btn, self.next_btn),
            ],
            labels=False,
        )
        self.scroll = scroll_above(self, self.form, min_height=140)
        self.class_names.save_btn.changed.connect(lambda _=None: self.class_names.save())
        self.keep_parent_btn.changed.connect(lambda _=None: self.keep_parent())
        self.next_btn.changed.connect(lambda _=None: self.segment_next())
        self.next_worker: Any = None
        if "unet" in list(self.base.choices):
            self.base.value = "unet"  # the small-data default
        self.base.changed.connect(lambda _=None: self._show_guide())
        self.base.changed.connect(lambda _=None: self._offer_freeze())
        self.base.changed.connect(lambda _=None: setattr(self.things, "visible", self._is_new_panoptic()))
        self.base.changed.connect(lambda _=None: self.class_names.show_for(self.base.value))
        for w in (self.base, self.epochs, self.minutes, self.trainset.pairs, self.trainset.image):
            w.changed.connect(lambda _=None: self._show_plan())
        self._show_guide()
        self._show_plan()
        self.class_names.show_for(self.base.value)
        self._offer_freeze()
        on_models_changed(self, self._on_models_changed)

    def _is_new_panoptic(self) -> bool:
        v = self.base.value
        return v is not None and v in {s.name for s in available()} and _task_of(v).takes_objects

    def _offer_freeze(self) -> None:
        """Freezing the encoder is offered only for models that have one."""
        v = self.base.value
        card = None if v is None else _card_of(v)
        arch = card.architecture if card is not None else v
        try:
            has = bool(arch) and get_spec(arch).has_encoder
        except KeyError:
            has = False
        self.freeze.enabled = has
        if not has:
            self.freeze.value = False

    def _thing_values(self) -> list[int] | None:
        text = self.things.value.strip()
        if not text or not self._is_new_panoptic():
            return None
        return [int(v) for v in text.replace(" ", "").split(",") if v] or None

    def _show_guide(self) -> None:
        self.guide.value = guide_text(self.base.value)

    def _show_plan(self) -> None:
        images = [p[0] for p in self.trainset.chosen()] or [v for v in [self.trainset.image.value] if v is not None]
        self.plan_note.value = plan_text(self.base.value, images, self.epochs.value, self.minutes.value)

    def _on_models_changed(self, _path: str) -> None:
        self.base.reset_choices()

    def reset_choices(self, *_: Any) -> None:
        super().reset_choices()
        self.form.reset_choices()

    # --- training ---
    def run(self) -> Any:
        """Start training; returns the worker (or ``None`` when the input is not usable or a run is going)."""
        if self.controls.busy():
            return None
        ts, refuse = self.trainset, self.controls.refuse
        pairs = ts.chosen()
        if not pairs:
            return refuse(ts._check_pair(*ts._current()) or "Add an image/labels pair to the training set.")
        rgbs = {bool(p[0].rgb) for p in pairs}
        if len(rgbs) > 1:
            return refuse("Mix of RGB and grayscale images: train on one kind at a time.")
        if self.base.value is None:
            return refuse("Pick a model to start from.")
        try:
            self._thing_values()
        except ValueError:
            return refuse(
                f"Thing classes must be label values separated by commas (e.g. 2, 3), not {self.things.value!r}."
            )
        images = [layer_data(p[0]) for p in pairs]  # the worker copies them
        labels = [layer_array(p[1]) for p in pairs]
        names = [ts.pair_label(p) for p in pairs]
        instances: list[Any] | None = None
        task = _task_of(self.base.value)
        if task.takes_objects:
            instances = [None if p[2] is None else layer_array(p[2]) for p in pairs]
        elif _is_object_model(self.base.value):  # a class per object, from the layers' features tables
            classes = [_class_image(p[1], lab) for p, lab in zip(pairs, labels)]
            if all(c is not None for c in classes):
                instances, labels = labels, [c for c in classes if c is not None]
        try:  # first what is wrong whatever the user says, then the conversion to ask about
            class_names = self.class_names.names()
            check_labels_vary(labels, [p[1].name for p in pairs], sparse=self.sparse.value, objects=instances)
            in_ch, dims = _takes(self.base.value)
            base_name = Path(self.base.value).name
            answers: dict[str, bool] = {}
            notes = {
                check_fit(base_name, in_ch, dims, p[0].name, img.shape, bool(p[0].rgb), self._ask_once(answers))
                for p, img in zip(pairs, images)
            } - {""}
        except ValueError as err:
            return refuse(str(err))
        name = self.model_name.value.strip() or f"{pairs[0][0].name}-{base_name}"
        try:  # the folder is taken now: a second run (another dock, another viewer) gets another name
            out = str(reserve_model_path(name, ts.project.models_dir if ts.project is not None else None))
        except OSError as err:
            return refuse(os_error_text(err))
        scale = tuple(float(s) for s in pairs[0][0].scale[-min(pairs[0][0].ndim, 3) :])
        cfg = TrainConfig(
            epochs=self.epochs.value,
            time_budget=self.minutes.value * 60 or None,
            freeze_encoder=self.freeze.value,
            voxel_size=scale if any(s != 1 for s in scale) else None,  # the layer's scale: into the card
            mirror_axes=fixed_orientation([(p[0].metadata.get("segsuite_source") or {}).get("path") for p in pairs]),
        )
        self._cancel.clear()

        self.plot.metric_name = task.score_name
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
            said = "".join(f"; {n}" for n in sorted(notes) + removed)
            self.controls.status.value = f"Saved '{Path(path).name}'{score}{said}"
            self.controls.status.tooltip = f"{path} ({why})"
            self._show_verdict(res.model.card)
            if ts.project is not None:
                ts.project.add_model(path)
            store_events.models_changed.emit(path)
            if path in list(self.base.choices):
                self.base.value = path  # the next round continues from the new model
            self.next_btn.enabled = True

        removed: list[str] = []

        def on_removed(layer: Any) -> None:
            removed.append(
                f"layer '{layer.name}' was removed during training: it learnt from the copy taken at the start"
            )
            self.verdict.value = removed[-1][0].upper() + removed[-1][1:] + "."
            show_info(self.verdict.value)

        self.controls.watch(self._viewer, [la for p in pairs for la in p], on_removed)
        self.scroll.ensureWidgetVisible(self.plot.native)  # the live plot in view while it trains
        worker = self.controls.launch(
            _finetune_work,
            self.base.value,
            images,
            labels,
            names,
            rgbs.pop(),
            cfg,
            out,
            self._cancel,
            self.sparse.value,
            instances,
            self._thing_values(),
            class_names,
            on_yield=on_yield,
            on_done=done,
            on_cancel=self._cancel.set,
        )
        if notes:
            self.controls.status.value = f"Training: {'; '.join(sorted(notes))}."
        return worker

    def _ask_once(self, answers: dict[str, bool]) -> Any:
        """``self.ask``, asked once for all the images of one run."""

        def ask_user(question: str) -> bool:
            if "answer" not in answers:
                answers["answer"] = self.ask(question)
            return answers["answer"]

        return ask_user

    # --- after training: did it get better, and the next round ---
    def _show_verdict(self, card: ModelCard) -> None:
        """Parent and new model scored on the same validation images, side by side."""
        c = card.comparison
        self.keep_parent_btn.visible = False
        if not c:
            self.verdict.value = ""
            return
        line = (
            f"{c['metric']} on the same validation images ({c['validation']}): "
            f"new {c['new']:.3f} vs parent '{c['parent_name']}' {c['parent']:.3f}"
        )
        if c["better"]:
            self.verdict.value = f"Better: {line}."
        else:
            self.verdict.value = f"Worse than the parent: {line}. You can keep the parent instead."
            self.keep_parent_btn.visible = True

    def keep_parent(self) -> None:
        """Discard the new (worse) model and go back to its parent in both widgets."""
        if self.last_path is None or self.last_result is None:
            return
        c = self.last_result.model.card.comparison or {}
        delete_model(Path(self.last_path).name)
        self.keep_parent_btn.visible = False
        self.verdict.value = f"Kept '{c.get('parent_name')}'; the new model was deleted."
        self.last_path = None
        store_events.models_changed.emit(c.get("parent_path") or "")
        if c.get("parent_path") in list(self.base.choices):
            self.base.value = c["parent_path"]

    def segment_next(self) -> Any:
        """Segment the unused image the new model is least sure of (layer order for object models; lazy: not ranked)."""
        if self.controls.busy():
            return None
        if self.last_path is None:
            return self.controls.refuse("Train a model first.")
        ts = self.trainset
        image = ts.next_image()
        if image is None:
            return self.controls.refuse(
                "No image left that is not already in the training set; open the next image first."
            )
        in_ch, dims = _takes(self.last_path)
        data = layer_data(image)  # not copied here: a lazy layer is read in the worker
        try:
            check_fit(Path(self.last_path).name, in_ch, dims, image.name, data.shape, bool(image.rgb), self.ask)
        except ValueError as err:
            return self.controls.refuse(str(err))
        if ts._pairs == [] and ts.image.value is not None and ts.labels_layer.value is not None:
            ts.add_pair()  # the pair just trained on stays in the set
        path, first = self.last_path, image
        others = ts.next_images(lambda la: la is not first and not is_lazy(layer_data(la)))  # ranking reads whole
        layers = [image, *(la for la in others if fits_as_is(path, in_ch, dims, la))]

        def work(datas: list, rgbs: list) -> Any:
            model = load_model(path)
            pick, seg, _ranking = yield from segment_most_uncertain(model, datas, rgbs)
            role = "semantic" if seg.semantic is not None else "instances"
            return prepare_result(seg.labels, model.card, role, seg.features), model.card, pick  # layer made here

        def done(result: tuple) -> None:
            part, card, pick = result
            image = layers[pick]
            if image not in self._viewer.layers:
                self.controls.status.value = f"Image layer '{image.name}' was removed during the run: no result added."
                return
            params = {"round": "segment next"}
            layer = add_result(self._viewer, part.labels, image, card, params, role=part.role, layer=part.layer)
            ts.image.value = image
            ts.labels_layer.reset_choices()
            ts.labels_layer.value = layer
            self.controls.status.value = f"Correct '{layer.name}', then Add pair and Train again."

        self.controls.watch(
            self._viewer,
            layers,
            lambda la: self.controls.stop(f"Stopped: image layer '{la.name}' was removed during the run; no result."),
        )
        self.next_worker = self.controls.launch(
            work,
            [data, *(layer_data(la) for la in layers[1:])],  # read in the worker
            [bool(la.rgb) for la in layers],
            on_yield=lambda p: self.controls.show_progress(p.step, p.total, p.note),
            on_done=done,
        )
        return self.next_worker
