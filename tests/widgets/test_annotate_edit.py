"""The Annotate dock's *Edit objects* section driven through napari's mouse callbacks, a drawn cut
line and its buttons: merge, split, cut, delete, fill holes, remove small, propagate in Z, undo."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest


def _press(viewer, position, modifiers=()):
    """A press and release at world ``position`` through the viewer's drag callbacks (as napari does)."""
    event = SimpleNamespace(position=tuple(position), modifiers=modifiers, button=1, type="mouse_press")
    live = []
    for cb in list(viewer.mouse_drag_callbacks):
        g = cb(viewer, event)
        if hasattr(g, "__next__"):
            with contextlib.suppress(StopIteration):
                next(g)
                live.append(g)
    event.type = "mouse_release"
    for g in live:
        with pytest.raises(StopIteration):
            next(g)


def _scene():
    """Two disks touching at a neck (object 1), a square with a hole (2), a bar (3), a speck (4)."""
    yy, xx = np.mgrid[:80, :100]
    lab = np.zeros((80, 100), np.int32)
    lab[((yy - 20) ** 2 + (xx - 16) ** 2 <= 81) | ((yy - 20) ** 2 + (xx - 32) ** 2 <= 81)] = 1
    lab[5:20, 60:75] = 2
    lab[10:13, 65:68] = 0
    lab[45:55, 10:60] = 3
    lab[70, 90] = 4
    image = (100 + 300 * (lab > 0)).astype(np.float32)
    return image, lab


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    image, lab = _scene()
    layer = viewer.add_image(image, name="scene")
    labels = viewer.add_labels(lab.copy(), name="objects")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    widget.image.value = layer
    widget.labels_layer.value = labels
    return viewer, widget, labels


def test_merge_split_delete_by_clicks_and_undo(dock):
    viewer, w, labels = dock
    start = labels.data.copy()
    w.tool.value = "click"
    w.edit.tool.value = "split"  # one tool at a time
    assert w.tool.value == "off" and str(labels.mode) == "pan_zoom"
    _press(viewer, (20, 14))
    _press(viewer, (20, 34))
    split = labels.data.copy()
    assert split[20, 14] == 1 and split[20, 34] == 5 and labels.selected_label == 5
    np.testing.assert_array_equal(split > 0, start > 0)
    np.testing.assert_array_equal(split[start != 1], start[start != 1])
    labels.undo()
    np.testing.assert_array_equal(labels.data, start)
    labels.redo()

    w.edit.tool.value = "merge"
    _press(viewer, (20, 14))
    _press(viewer, (20, 34))
    np.testing.assert_array_equal(labels.data, start)  # merged back into 1
    labels.undo()
    np.testing.assert_array_equal(labels.data, split)

    w.edit.tool.value = "delete"
    _press(viewer, (50, 30))
    assert not (labels.data == 3).any() and (labels.data[split != 3] == split[split != 3]).all()
    labels.undo()
    np.testing.assert_array_equal(labels.data, split)
    _press(viewer, (79, 0))  # background: nothing happens
    np.testing.assert_array_equal(labels.data, split)
    w.tool.value = "click"
    assert w.edit.tool.value == "off"


def test_cut_by_a_drawn_line_and_the_buttons(dock):
    viewer, w, labels = dock
    start = labels.data.copy()
    w.edit.tool.value = "cut"
    shapes = viewer.layers["annotate cuts"]
    assert viewer.layers.selection.active is shapes and str(shapes.mode) == "add_path"
    shapes.add_paths(np.array([[40.0, 40.0], [60.0, 40.0]]))  # across the bar
    cut = labels.data.copy()
    assert not len(shapes.data)
    assert (cut[45:55, 10:40] == 3).all() and (cut[45:55, 41:60] == 5).all()  # the larger piece keeps 3
    np.testing.assert_array_equal(cut[start != 3], start[start != 3])
    labels.undo()
    np.testing.assert_array_equal(labels.data, start)

    labels.selected_label = 2
    w.edit.fill_holes()
    assert (labels.data[5:20, 60:75] == 2).all() and (labels.data[start != 0] == start[start != 0]).all()
    labels.undo()
    np.testing.assert_array_equal(labels.data, start)
    w.edit.min_size.value = 5
    w.edit.remove_small()
    assert labels.data[70, 90] == 0 and ((labels.data != start).sum()) == 1
    labels.undo()
    np.testing.assert_array_equal(labels.data, start)
    assert w.edit.propagate_btn.native.isHidden() and w.edit.whole.native.isHidden()  # for volumes only
    assert w.edit.propagate() is None and "volume" in w.controls.status.value  # a 2D image


def test_propagate_in_z_and_whole_object_delete(make_napari_viewer):
    viewer = make_napari_viewer()
    zz, yy, xx = np.mgrid[:14, :64, :64]
    blob = ((zz - 6) / 3.6) ** 2 + ((yy - 32) / 12) ** 2 + ((xx - 28) / 12) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = viewer.add_image((100 + 400 * blob + rng.normal(0, 25, blob.shape)).astype(np.float32), name="stack")
    lab = np.zeros(blob.shape, np.int32)
    lab[6][blob[6]] = 1
    lab[:, 0:4, 0:4] = 2
    labels = viewer.add_labels(lab.copy(), name="objects")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    w.image.value, w.labels_layer.value = image, labels
    assert not w.edit.propagate_btn.native.isHidden()
    viewer.dims.set_current_step(0, 6)
    labels.selected_label = 1
    w.edit.propagate()
    got = labels.data == 1
    assert (got & blob).sum() / (got | blob).sum() >= 0.8
    assert np.nonzero(got.any(axis=(1, 2)))[0].tolist() == list(range(3, 10))
    assert (labels.data[:, 0:4, 0:4] == 2).all()
    labels.undo()  # one step takes all slices back
    np.testing.assert_array_equal(labels.data, lab)
    labels.redo()
    propagated = labels.data.copy()

    w.edit.tool.value = "delete"
    w.edit.whole.value = False  # this slice only
    _press(viewer, (6, 32, 28))
    assert not (labels.data[6] == 1).any() and (labels.data[5] == propagated[5]).all()
    labels.undo()
    w.edit.whole.value = True  # the whole object
    _press(viewer, (6, 32, 28))
    assert not (labels.data == 1).any() and (labels.data == 2).sum() == 14 * 16
    labels.undo()
    np.testing.assert_array_equal(labels.data, propagated)

    # what the user paints while a propagation runs stays; a closed layer gets nothing written
    from napari_segsuite.annotate.propagate import propagate

    labels.undo()  # back to the one slice
    edits = propagate(np.asarray(labels.data), image.data, 1, 6)
    labels.data_setitem((np.array([5]), np.array([32]), np.array([28])), 7)  # painted meanwhile
    w.edit._write_all(edits, 1, labels)
    assert labels.data[5, 32, 28] == 7 and (labels.data[4] == 1).any()
    viewer.layers.remove(labels)
    w.edit._write_all(edits, 1, labels)
    assert "was closed" in w.controls.status.value


def test_keys_switch_the_edit_tools_and_are_not_napari_shortcuts(dock):
    from app_model.types import KeyBinding
    from napari.utils.shortcuts import default_shortcuts

    from napari_segsuite.widgets.annotate_edit import EDIT_KEYS

    viewer, w, _ = dock
    napari_keys = {str(KeyBinding.from_str(str(k))) for keys in default_shortcuts.values() for k in keys}
    for key, tool in EDIT_KEYS.items():
        assert str(KeyBinding.from_str(key)) not in napari_keys, key
        viewer.keymap[KeyBinding.from_str(key)](viewer)
        assert w.edit.tool.value == tool and w.tool.value == "off"


def test_propagate_with_a_model_runs_in_a_worker(make_napari_viewer, qtbot):
    from napari_segsuite import sample_data as sd
    from napari_segsuite.model_files import save_model
    from napari_segsuite.store import model_dir
    from napari_segsuite.workflows import model_for_training

    s = sd.nuclei_3d(seed=0, shape=(5, 48, 48), n=8)
    model = model_for_training("unet-instance", [s["image"][2]], [s["instances"][2]], base_filters=4, depth=2)
    model.card.name = "tiny"
    save_model(model, model_dir() / "tiny")
    viewer = make_napari_viewer()
    image = viewer.add_image(s["image"], name="stack")
    truth = s["instances"][2]
    obj = int(np.bincount(truth.ravel())[1:].argmax() + 1)
    lab = np.zeros(s["instances"].shape, np.int32)
    lab[2][truth == obj] = 3
    labels = viewer.add_labels(lab.copy(), name="objects")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    w.image.value, w.labels_layer.value = image, labels
    w.model.reset_choices()
    w.model.value = next(v for v in w.model.choices if v.endswith("tiny"))
    viewer.dims.set_current_step(0, 2)
    labels.selected_label = 3
    assert w.edit.propagate() is not None  # a worker: each slice's maps come from the model
    qtbot.waitUntil(lambda: w.controls.worker is None, timeout=60_000)
    assert w.controls.status.value.startswith("Object 3 propagated")
    np.testing.assert_array_equal(labels.data[2], lab[2])
    assert set(np.unique(labels.data)) <= {0, 3}


@pytest.mark.screenshot
def test_screenshot(make_napari_viewer, qtbot):
    """docs/screenshots/annotate_edit.png: the Edit objects section on a laptop screen, a volume's object propagated."""
    from pathlib import Path

    from napari_segsuite import sample_data as sd

    viewer = make_napari_viewer(show=True)
    s = sd.nuclei_3d(seed=1, shape=(24, 128, 128), n=14)
    image = viewer.add_image(s["image"], name="nuclei 3D")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    viewer.window._qt_window.resize(1366, 768)
    w.image.value = image
    labels = w.new_labels()
    truth = s["instances"]
    z = truth.shape[0] // 2
    ids = [i for i in np.argsort(-np.bincount(truth[z].ravel())) if i][:5]
    for k, i in enumerate(ids, 1):
        labels.data[z][truth[z] == i] = k
    viewer.dims.set_current_step(0, z)
    for k in range(1, len(ids) + 1):
        labels.selected_label = k
        w.edit.propagate()
    w.sections.native.layout().itemAt(0).widget().head.setChecked(False)  # fold "Click and box"
    w.edit.tool.value = "split"
    assert (labels.data[z - 2] > 0).any() and (labels.data[z + 2] > 0).any()
    qtbot.wait(50)
    docs = Path(__file__).parents[2] / "docs" / "screenshots"
    assert viewer.screenshot(str(docs / "annotate_edit.png"), canvas_only=False).shape[:2] == (768, 1366)


def test_a_cut_on_a_scaled_volume_after_a_2d_layer_lands_on_the_slice_shown(dock):
    """The cut layer made for a 2D layer is made again in a volume's geometry; the slice is read
    through the volume's own slice spacing and offset, not from the viewer's first step."""
    viewer, w, labels = dock
    w.edit.tool.value = "cut"  # a cut layer in the 2D layer's geometry
    w.edit.tool.value = "off"
    _, lab = _scene()
    vol = np.stack([lab] * 5)
    stack = viewer.add_image(np.stack([_scene()[0]] * 5), name="stack", scale=(3.0, 1, 1), translate=(6.0, 0, 0))
    vlabels = viewer.add_labels(vol.copy(), name="volume", scale=(3.0, 1, 1), translate=(6.0, 0, 0))
    w.image.value, w.labels_layer.value = stack, vlabels
    viewer.dims.set_point(0, 6.0 + 3.0 * 2)  # slice 2 of the volume
    w.edit.tool.value = "cut"
    shapes = viewer.layers["annotate cuts"]
    assert shapes.ndim == 3 and tuple(shapes.scale) == (3.0, 1.0, 1.0)
    shapes.add_paths(np.array([[2.0, 40.0, 40.0], [2.0, 60.0, 40.0]]))  # data coordinates of the shapes layer
    changed = np.nonzero((vlabels.data != vol).any(axis=(1, 2)))[0].tolist()
    assert changed == [2] and (vlabels.data[2, 45:55, 41:60] == 5).all()
    from napari_segsuite.widgets._layers import current_slice

    assert current_slice(viewer, vlabels) == 2 and current_slice(viewer, stack) == 2
