"""The docks under faults: layers renamed or removed during a run, the viewer closed while training,
a full disk, read-only or damaged project folders, two runs at once. Each gives one clear
notification, keeps the best model and the user's layers, and leaves no half-written file."""

import errno
import functools
import os
from pathlib import Path

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import load_model
from napari_segsuite.store import model_dir, release_model_path, reserve_model_path


@pytest.fixture
def notes():
    """Every napari notification shown during the test (message, severity)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event):
        seen.append((str(event.message), str(event.severity)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def small(make_napari_viewer, monkeypatch):
    from napari_segsuite.widgets import finetune

    monkeypatch.setattr(finetune, "TrainConfig", functools.partial(finetune.TrainConfig, steps_per_epoch=1))
    viewer = make_napari_viewer()
    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    image = viewer.add_image(s["image"], name="cells")
    labels = viewer.add_labels(s["semantic"], name="cells truth")
    return viewer, image, labels


def _fine_tune(viewer, image, labels, name, epochs=1):
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, labels
    fin.base.value, fin.epochs.value, fin.model_name.value = "unet", epochs, name
    return fin


def _no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in Path(folder).rglob(".*")]
    assert hidden == [], f"half-written files left: {hidden}"


def _wait(qtbot, controls, timeout=60_000):
    qtbot.waitUntil(lambda: controls.worker is None, timeout=timeout)


def test_image_renamed_then_removed_during_segment(small, qtbot, notes):
    viewer, image, _ = small
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value, seg.tile.value = image, 64
    assert seg.run() is not None
    image.name = "renamed"  # a rename is no fault: the result follows the new name
    _wait(qtbot, seg.controls)
    assert viewer.layers[-1].name.startswith("renamed · ") and notes == []
    n = len(viewer.layers)
    assert seg.run() is not None
    viewer.layers.remove(image)
    _wait(qtbot, seg.controls)
    assert len(viewer.layers) == n - 1  # no result, every other layer kept
    said = [m for m, _ in notes]
    assert len(said) == 1 and "image layer 'renamed' was removed during the run" in said[0], said


def test_viewer_closed_during_training_keeps_the_best_model(small, qtbot):
    viewer, image, labels = small
    fin = _fine_tune(viewer, image, labels, "closed", epochs=500)
    worker = fin.run()
    assert worker is not None
    out = model_dir() / "closed"
    qtbot.waitUntil(lambda: (out / "model.json").is_file(), timeout=60_000)  # a first checkpoint
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    print(
        "after wait", worker.is_running, worker.abort_requested, fin._cancel.is_set(), flush=True
    )  # the run stopped, as with Cancel
    card = load_model(out).card
    assert card.training["stopped"] == "cancelled"
    _no_leftovers(model_dir())


def test_disk_full_while_saving_a_checkpoint(small, qtbot, monkeypatch, notes):
    from napari_segsuite import model_files

    real, calls = model_files.save_file, []

    def full_after_first(state, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(state, path, metadata=metadata)

    monkeypatch.setattr(model_files, "save_file", full_after_first)
    viewer, image, labels = small
    before = [(la.name, la.data.copy()) for la in viewer.layers]
    fin = _fine_tune(viewer, image, labels, "full disk", epochs=3)
    assert fin.run() is not None
    _wait(qtbot, fin.controls)
    errors = [m for m, sev in notes if sev == "error"]
    assert len(errors) == 1 and errors[0].startswith("The disk is full: could not write"), notes
    assert "The disk is full" in fin.controls.status.value
    assert load_model(model_dir() / "full disk").card.training["stopped"] == "running"  # the first checkpoint
    _no_leftovers(model_dir())
    assert [la.name for la in viewer.layers] == [b[0] for b in before]
    for layer, (_, data) in zip(viewer.layers, before):
        np.testing.assert_array_equal(layer.data, data)


def test_read_only_and_damaged_project_folders(small, qtbot, tmp_path, monkeypatch, notes):
    from napari_segsuite import project as project_mod

    viewer, image, labels = small
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    ts = fin.trainset
    ts.image.value, ts.labels_layer.value = image, labels
    assert ts.add_pair() and ts.open_project(tmp_path / "proj") is not None
    saved = (tmp_path / "proj" / "labels" / "cells.tif").read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "proj" / "labels" / "cells.tif"))

    monkeypatch.setattr(project_mod, "write_labels", read_only)  # the folder became read-only
    for value in (1, 0):  # two edits: one message, not two
        labels.selected_label = value
        labels.paint((10, 10), value)
        ts._save_dirty()
    errors = [m for m, sev in notes if sev == "error"]
    assert len(errors) == 1 and "read-only" in errors[0] and "Your layers stay open" in errors[0], notes
    assert ts.project is None and labels in viewer.layers  # the edits stay in the viewer
    assert (tmp_path / "proj" / "labels" / "cells.tif").read_bytes() == saved  # the file on disk untouched
    _no_leftovers(tmp_path / "proj")

    notes.clear()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "project.json").write_text('{"pairs": [ {"name": ')  # cut short
    n = len(viewer.layers)
    assert ts.open_project(tmp_path / "bad") is None
    assert len(notes) == 1 and "project.json' is damaged" in notes[0][0] and len(viewer.layers) == n
    assert (tmp_path / "bad" / "project.json").read_text() == '{"pairs": [ {"name": '  # not "repaired" away


def test_two_runs_at_once(small, qtbot, notes):
    viewer, image, labels = small
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value, seg.tile.value = image, 64
    n = len(viewer.layers)
    assert seg.run() is not None
    assert seg.run() is None  # a second click while the first runs
    assert [m for m, _ in notes] == [
        "A run is still going: wait for it to finish or press Cancel before starting another."
    ]
    _wait(qtbot, seg.controls)
    assert len(viewer.layers) == n + 1
    # two Fine-tune runs (two docks, two viewers) asking for the same name never share a folder
    a, b = reserve_model_path("same"), reserve_model_path("same")
    assert a != b and a.is_dir() and b.is_dir()
    release_model_path(a)
    assert not a.exists() and b.exists()
