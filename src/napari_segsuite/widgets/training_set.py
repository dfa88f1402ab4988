"""The training set of the Fine-tune dock: image/labels pairs from the viewer, a project folder that
saves them as the user edits, and pairs opened from folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Table
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from .. import store
from ..preprocess import infer_axes
from ..project import Project
from ._common import os_error_text
from ._events import store_events
from ._layers import layer_array, layer_choices, partner_layer

PAIR_COLUMNS = ("image", "labels", "objects", "size", "annotated")
Pair = tuple[napari.layers.Image, napari.layers.Labels, "napari.layers.Labels | None"]


class TrainingSet(Container):
    """The pairs to train on, chosen from the viewer's layers, optionally kept in a project folder.

    Args:
        viewer: The napari viewer.
        on_status: Called with one line for the user (e.g. the project just opened).
    """

    def __init__(self, viewer: napari.viewer.Viewer, on_status: Callable[[str], None]) -> None:
        self._viewer = viewer
        self._on_status = on_status
        self.project_dir = FileEdit(
            label="Project",
            mode="d",  # type: ignore[arg-type]
            value="",  # type: ignore[arg-type]
            tooltip="A folder for the training set, its labels and the models trained on "
            "it, saved as you work. Empty: no project.",
        )
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
            label="Objects",
            choices=lambda _w: [("auto", None), *layer_choices(viewer, napari.layers.Labels)],
            tooltip="Panoptic models: the object-id layer that goes with the class labels. auto: the one made with "
            "it by Segment, else each connected region of a thing class is one object.",
        )
        self.add_btn = PushButton(text="Add pair")
        self.remove_btn = PushButton(text="Remove selected")
        self.folder_btn = PushButton(
            text="Add folders…",
            tooltip="Open image/label pairs from two folders (matched by file name) as layers and add them to the set.",
        )
        self.pairs = Table(
            value={"data": [], "index": [], "columns": list(PAIR_COLUMNS)},
            label="Training set",
            tooltip="Image/labels pairs to train on (empty: the pair above). Select rows and "
            "'Remove selected' to drop them; annotated = share of non-zero label pixels.",
        )
        self.pairs.read_only = True
        self.pairs.min_height = 110
        self._pairs: list[Pair] = []
        super().__init__(
            widgets=[
                Container(widgets=[self.project_dir, self.open_project_btn]),
                self.image,
                self.labels_layer,
                self.objects,
                Container(widgets=[self.add_btn, self.folder_btn, self.remove_btn], layout="horizontal", labels=False),
                self.pairs,
            ]
        )
        self.add_btn.changed.connect(lambda _=None: self.add_pair())
        self.open_project_btn.changed.connect(lambda _=None: self.open_project(self.project_dir.value))
        self.remove_btn.changed.connect(lambda _=None: self._remove_selected())
        self.folder_btn.changed.connect(lambda _=None: self._ask_folders())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda _=None: self._on_layers_changed())

    def _refuse(self, message: str) -> None:
        """In a pop-up and in the dock's status line."""
        show_error(message)
        self._on_status(message)

    def chosen(self) -> list[Pair]:
        """The pairs in the set, or the pair picked above when the set is empty (``[]`` if none is usable)."""
        if self._pairs:
            return list(self._pairs)
        current = self._current()
        return [] if self._check_pair(*current) else [current]

    def next_images(self, fits: Callable[[Any], bool] | None = None) -> list[Any]:
        """The image layers that are neither in the set nor picked above (and that ``fits``), in layer order."""
        used = {id(p[0]) for p in self._pairs} | {id(self.image.value)}
        return [
            la
            for la in self._viewer.layers
            if isinstance(la, napari.layers.Image) and id(la) not in used and (fits is None or fits(la))
        ]

    def next_image(self) -> Any:
        """The first of :meth:`next_images`, or ``None``."""
        return next(iter(self.next_images()), None)

    # --- pairs ---
    def _check_pair(self, image: Any, labels: Any, objects: Any = None) -> str | None:
        if image is None or labels is None:
            return "Pick an image layer and the Labels layer that belongs to it."
        axes = infer_axes(image.data.shape if not image.multiscale else image.data[0].shape, image.rgb)
        want = axes.spatial_shape(tuple(image.data.shape if not image.multiscale else image.data[0].shape))
        for layer in (labels, objects):
            got = None if layer is None else tuple(layer.data.shape)
            if got is not None and got != want:
                return (
                    f"Labels layer '{layer.name}' is {'x'.join(map(str, got))} but image '{image.name}' is "
                    f"{'x'.join(map(str, want))}; pick the labels that belong to this image."
                )
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
            self._refuse(problem)
            return False
        if any(p[0] is image and p[1] is labels for p in self._pairs):
            return True
        self._pairs.append((image, labels, objects))
        self._refresh_pairs()
        if self.project is not None:
            self._track(image, labels, objects, None)
        return True

    @staticmethod
    def pair_label(pair: Pair) -> str:
        return f"{pair[0].name} + {pair[1].name}" + (f" + {pair[2].name}" if pair[2] is not None else "")

    def pair_rows(self) -> list[list[str]]:
        """The training-set table: image, labels, objects, size and annotated share per pair."""
        rows = []
        for image, labels, objects in self._pairs:
            data = labels.data[0] if getattr(labels, "multiscale", False) else labels.data
            rows.append(
                [
                    image.name,
                    labels.name,
                    objects.name if objects is not None else "",
                    "x".join(map(str, data.shape)),
                    f"{float((np.asarray(data) != 0).mean()):.0%}",
                ]
            )
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
        self._pairs = [
            p for p in self._pairs if id(p[0]) in alive and id(p[1]) in alive and (p[2] is None or id(p[2]) in alive)
        ]
        self._refresh_pairs()
        self.image.reset_choices()
        self.labels_layer.reset_choices()
        self.objects.reset_choices()

    # --- project folder: the set, its labels and its models, saved as the user works ---
    def open_project(self, folder: Any) -> Project | None:
        """Open (or create) a project folder: its saved pairs come back as layers in the set, pairs in the
        set now are saved into it, and from then on every edit of their labels is saved (within a second)."""
        if not folder or str(folder) in ("", "."):
            self._refuse("Choose a folder for the project first.")
            return None
        try:
            project = Project(folder)
            saved = project.pairs()  # all read (and checked) before any layer is added
            models_dir = project.models_dir
        except ValueError as err:
            self._refuse(str(err))
            return None
        except OSError as err:
            self._refuse(f"Project {str(folder)!r}: {os_error_text(err)}")
            return None
        self.project = project
        store.EXTRA_DIRS[:] = [models_dir]
        for pair in saved:
            image = self._viewer.add_image(pair.image, name=pair.name)
            labels = self._viewer.add_labels(pair.labels, name=f"{pair.name} labels")
            objects = (
                self._viewer.add_labels(pair.objects, name=f"{pair.name} objects") if pair.objects is not None else None
            )
            self._pairs.append((image, labels, objects))
            self._track(image, labels, objects, pair.name)
        for image, labels, objects in list(self._pairs):
            if id(labels) not in self._pair_names:
                self._track(image, labels, objects, None)
        self._refresh_pairs()
        if self.project is None:  # a write failed: said once, nothing else is saved
            return None
        store_events.models_changed.emit("")
        self._on_status(f"Project '{project.folder.name}': {len(project.names())} pairs, saved as you edit.")
        return project

    def _track(self, image: Any, labels: Any, objects: Any, name: str | None) -> None:
        """Save a pair into the open project (when new) and save its labels again on every edit."""
        if self.project is None:
            return
        if name is None:
            try:
                name = self.project.add_pair(
                    image.name,
                    layer_array(image),
                    layer_array(labels),
                    None if objects is None else layer_array(objects),
                )
            except OSError as err:
                self._write_error(err)
                return
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
        try:
            for _image, labels, objects in self._pairs:
                if id(labels) in self._dirty and id(labels) in self._pair_names:
                    self.project.save_labels(
                        self._pair_names[id(labels)],
                        layer_array(labels),
                        None if objects is None else layer_array(objects),
                    )
        except OSError as err:
            self._write_error(err)
        self._dirty.clear()

    def _write_error(self, err: OSError) -> None:
        """The project folder cannot be written (read-only, disk full): said once; the project is closed so
        that no edit tries again, and the layers (the user's edits) stay in the viewer as they are."""
        folder = self.project.folder if self.project is not None else ""
        self.project = None
        store.EXTRA_DIRS[:] = []
        self._refuse(
            f"Project '{folder}' closed: {os_error_text(err)} Your layers stay open in the viewer; "
            "save them with File > Save, or open the project in a folder you can write to."
        )

    # --- pairs from folders ---
    def add_folders(self, images: str | Path, labels: str | Path) -> int:
        """Open every image of ``images`` with its label file from ``labels`` (matched by name, as the
        CLI does) as layers, and add the pairs to the set; returns how many were added."""
        from ..io import match_pairs, read_image, read_labels

        try:
            pairs = match_pairs(images, labels)
        except FileNotFoundError as err:
            self._refuse(str(err))
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
