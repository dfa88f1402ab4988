"""The Annotate dock driven through napari's mouse callbacks: clicks, Ctrl-click, a drawn box, undo, a volume."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import save_model
from napari_segsuite.store import model_dir
from napari_segsuite.workflows import model_for_training


def _press(viewer, position, modifiers=(), drag_to=None):
    """A press and release on the canvas at world ``position`` through the viewer's drag callbacks
    (what napari calls for a real mouse click); ``drag_to`` moves the mouse in between (a pan)."""
    event = SimpleNamespace(position=tuple(position), modifiers=modifiers, button=1, type="mouse_press")
    gens = [cb(viewer, event) for cb in list(viewer.mouse_drag_callbacks)]
    live = []
    for g in gens:
        if hasattr(g, "__next__"):
            with contextlib.suppress(StopIteration):  # as napari does: a callback may be done at once
                next(g)
                live.append(g)
    if drag_to is not None:
        event.type, event.position = "mouse_move", tuple(drag_to)
        for g in live:
            next(g)
    event.type = "mouse_release"
    for g in live:
        with pytest.raises(StopIteration):
            next(g)


def _centre(mask):
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(d.argmax()), d.shape)


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    s = sd.nuclei_2d(seed=3, shape=(128, 128))
    image = viewer.add_image(s["image"], name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    widget.image.value = image
    labels = widget.new_labels()
    return viewer, widget, labels, s["instances"]


def test_clicks_ctrl_click_box_and_undo(dock):
    viewer, w, labels, truth = dock
    assert labels.data.dtype == np.int32 and labels.data.shape == truth.shape and not labels.data.any()
    w.tool.value = "click"
    assert viewer.layers.selection.active.name == labels.name and str(labels.mode) == "pan_zoom"
    areas = np.bincount(truth.ravel())
    big = [int(i) for i in np.argsort(-areas)[:3] if i]
    y, x = _centre(truth == big[0])
    _press(viewer, (y, x))
    first = labels.data.copy()
    assert first[y, x] == 1 and (first == 1).sum() > 20
    iou = ((first == 1) & (truth == big[0])).sum() / ((first == 1) | (truth == big[0])).sum()
    assert iou > 0.6
    _press(viewer, (y, x), drag_to=(y + 20, x + 20))  # a drag pans: no click
    np.testing.assert_array_equal(labels.data, first)
    w.finish()
    y2, x2 = _centre(truth == big[1])
    _press(viewer, (y2, x2))
    assert labels.data[y2, x2] == 2 and labels.data[y, x] == 1
    labels.undo()  # napari's undo takes the second object back
    np.testing.assert_array_equal(labels.data, first)
    w.finish()
    _press(viewer, (y, x), modifiers=("Control",))  # Ctrl-click on an object, none refined: delete it
    assert not labels.data.any()
    labels.undo()
    np.testing.assert_array_equal(labels.data, first)

    w.tool.value = "box"  # a rectangle drawn in the boxes layer adds the objects inside it
    shapes = viewer.layers["annotate boxes"]
    assert viewer.layers.selection.active.name == shapes.name and str(shapes.mode) == "add_rectangle"
    before = labels.data.copy()
    shapes.add_rectangles(np.array([[60, 60], [127, 127]]))
    added = np.unique(labels.data[(labels.data > 0) & (before == 0)])
    assert len(added) >= 2 and (labels.data[60:, 60:] > 0).mean() > 0.15
    assert not len(shapes.data)  # the box is consumed
    assert ((labels.data > 0) & (before == 0))[:60].sum() == 0 and ((labels.data > 0) & (before == 0))[
        :, :60
    ].sum() == 0
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_current_slice_of_a_volume_with_a_model(make_napari_viewer, qtbot):
    s = sd.nuclei_3d(seed=0, shape=(5, 64, 64), n=12)
    z = int(np.argmax([len(np.unique(sl)) for sl in s["instances"]]))
    model = model_for_training("unet-instance", [s["image"][z]], [s["instances"][z]], base_filters=4, depth=2)
    model.card.name = "tiny"
    save_model(model, model_dir() / "tiny")
    viewer = make_napari_viewer()
    image = viewer.add_image(s["image"], name="stack")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    w.image.value = image
    labels = w.new_labels()
    w.model.reset_choices()
    w.model.value = next(v for v in w.model.choices if v.endswith("tiny"))
    w.tool.value = "click"
    viewer.dims.set_current_step(0, z)
    truth = s["instances"][z]
    y, x = _centre(truth == np.bincount(truth.ravel())[1:].argmax() + 1)
    _press(viewer, (z, y, x))  # the first click on this slice computes the model's maps in a worker...
    qtbot.waitUntil(lambda: w.controls.worker is None, timeout=60_000)
    assert "Maps ready" in w.controls.status.value or labels.data.any()
    assert labels.data[z, y, x] == 1  # ...then the click is made, on this slice only
    assert not np.delete(labels.data, z, axis=0).any()


def test_current_slice_of_a_multiscale_volume(make_napari_viewer):
    """A multiscale volume (a list of levels, as OME-Zarr opens) is annotated slice by slice too."""
    vol = np.random.default_rng(0).random((6, 64, 64)).astype(np.float32)
    viewer = make_napari_viewer()
    image = viewer.add_image([vol, vol[:, ::2, ::2]], multiscale=True, name="pyramid")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    w.image.value = image
    viewer.dims.set_current_step(0, 4)
    assert w._current_z() == 4


@pytest.mark.screenshot
def test_readme_screenshot(make_napari_viewer, qtbot):
    """docs/screenshots/annotate.png: the dock on a laptop screen after a few clicks and a box."""
    from pathlib import Path

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-segsuite", "nuclei2d")
    _, w = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    viewer.window._qt_window.resize(1366, 768)
    image = viewer.layers["nuclei 2D"]
    truth = viewer.layers["nuclei 2D ground truth (instances)"].data
    for layer in list(viewer.layers):
        if layer is not image:
            viewer.layers.remove(layer)
    w.image.value = image
    labels = w.new_labels()
    w.tool.value = "click"
    for i in np.argsort(-np.bincount(truth.ravel()))[:6]:
        if i:
            w.finish()
            _press(viewer, _centre(truth == i))
    w.box(150, 150, 250, 250)
    w.tool.value = "click"
    assert len(np.unique(labels.data)) > 6
    qtbot.wait(50)
    docs = Path(__file__).parents[2] / "docs" / "screenshots"
    assert viewer.screenshot(str(docs / "annotate.png"), canvas_only=False).shape[:2] == (768, 1366)
