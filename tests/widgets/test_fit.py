"""The docks on a laptop screen, the checks made before any run, and the objects' tables."""

import functools
from pathlib import Path

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.models import available
from napari_segsuite.store import model_dir
from napari_segsuite.workflows import model_for_training

SCREEN = (1366, 768)
DOCS = Path(__file__).parents[2] / "docs" / "screenshots"


def _wait(qtbot, controls, timeout=120_000):
    qtbot.waitUntil(lambda: controls.worker is None, timeout=timeout)


def _laptop_viewer(make_napari_viewer, qtbot, *docks):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-segsuite", "nuclei2d")
    widgets = [viewer.window.add_plugin_dock_widget("napari-segsuite", d) for d in docks]
    viewer.window._qt_window.resize(*SCREEN)
    qtbot.wait(50)
    return viewer, widgets


def _picker(seg):
    return [seg.model.native.itemText(i) for i in range(seg.model.native.count())]


def _save(model, name):
    model.card.name = name
    return str(save_model(model, model_dir() / name))


def test_all_docks_fit_a_laptop_screen(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint

    viewer, docks = _laptop_viewer(make_napari_viewer, qtbot, "Segment", "Fine-tune", "Annotate")
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= SCREEN[1], window.minimumSizeHint()
    assert window.height() <= SCREEN[1]
    for dock, widget in docks:
        assert dock.minimumSizeHint().height() <= 700, (dock.name, dock.minimumSizeHint())
        # what a run needs sits with its button, outside the form that scrolls, and on the screen
        controls = widget.controls
        form = getattr(widget, "scroll", None)  # Fine-tune's form scrolls; Segment's is short enough not to
        assert form is None or not form.isAncestorOf(controls.native)
        for part in (controls.start_btn, controls.cancel_btn, controls.bar, controls.status):
            assert controls.native.isAncestorOf(part.native)
        bottom = controls.native.mapTo(window, QPoint(0, controls.native.height())).y()
        assert 0 < bottom <= SCREEN[1], (dock.name, bottom)


@pytest.mark.screenshot
def test_readme_screenshots_one_per_dock(make_napari_viewer, qtbot, monkeypatch):
    """docs/screenshots/segment.png and finetune.png, as a laptop screen shows them."""
    from napari_segsuite.widgets import finetune

    DOCS.mkdir(parents=True, exist_ok=True)
    viewer, [(_, seg)] = _laptop_viewer(make_napari_viewer, qtbot, "Segment")
    seg.image.value = viewer.layers["nuclei 2D"]
    seg.run()
    _wait(qtbot, seg.controls)
    qtbot.waitUntil(lambda: viewer.layers[-1].visible)  # the result is shown turns after it is added
    assert viewer.screenshot(str(DOCS / "segment.png"), canvas_only=False).shape[:2] == SCREEN[::-1]

    monkeypatch.setattr(finetune, "TrainConfig", functools.partial(finetune.TrainConfig, steps_per_epoch=6))
    viewer, [(_, fin)] = _laptop_viewer(make_napari_viewer, qtbot, "Fine-tune")
    fin.trainset.image.value = viewer.layers["nuclei 2D"]
    fin.trainset.labels_layer.value = viewer.layers["nuclei 2D ground truth (semantic)"]
    fin.base.value = next(v for v in fin.base.choices if v.endswith("nuclei-unet"))
    fin.epochs.value, fin.minutes.value, fin.model_name.value = 2, 1.0, "my nuclei"
    fin.run()
    _wait(qtbot, fin.controls)
    assert fin.verdict.value
    assert fin.plot.wait_drawn()  # the plot is drawn in the background: its last picture in the shot
    qtbot.wait(100)
    assert viewer.screenshot(str(DOCS / "finetune.png"), canvas_only=False).shape[:2] == SCREEN[::-1]


# --- the checks before a run ---
def test_rgb_image_and_grey_model(make_napari_viewer, qtbot):
    rgb_path = _save(new_model("unet", label_values=[0, 1], in_channels=3, depth=2, base_filters=4), "colour-cells")
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    grey = viewer.add_image(rng.random((48, 48)), name="grey")
    colour = viewer.add_image(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), name="colour", rgb=True)
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value = grey
    seg.model.value = rgb_path
    seg.image.value = colour  # the picker keeps a model that takes RGB...
    assert seg.model.value == rgb_path
    seg.image.value = grey  # ...and moves to a grey one for a grey image
    assert seg.model.value.endswith("nuclei-unet")
    assert "Classes: background, nucleus" in seg.info.value and "· background, nucleus" in _picker(seg)[0]

    seg.image.value = colour
    seg.model.value = next(v for v in seg.model.choices if v.endswith("nuclei-unet"))  # the user insists
    assert "'nuclei-unet' takes grey images and 'colour' is RGB" in seg.info.value
    seg.ask = lambda question: False
    assert seg.run() is None and seg.controls.worker is None
    assert seg.controls.status.value.startswith("Nothing started: 'nuclei-unet' takes grey images")
    asked = []
    seg.ask = lambda question: asked.append(question) or True
    assert seg.run() is not None
    _wait(qtbot, seg.controls)
    assert "convert it to grey" in asked[0]
    assert "converted 'colour' from RGB to grey" in seg.controls.status.value
    assert viewer.layers[-1].metadata["segsuite"]["params"]["converted"].startswith("converted 'colour'")


def test_3d_model_on_a_2d_image_and_on_one_slice(make_napari_viewer):
    path = _save(new_model("unet3d", label_values=[0, 1], depth=2, base_filters=4), "tiny3d")
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    volume = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value = image
    seg.model.value = path
    assert "'flat' is 2D: pick a 2D model" in seg.info.value
    assert seg.run() is None and seg.controls.worker is None
    assert "'tiny3d' is a 3D model and 'flat' is a 2D image" in seg.controls.status.value
    seg.image.value, seg.model.value, seg.current_slice.value = volume, path, True
    assert seg.run() is None and "untick 'Current slice'" in seg.controls.status.value

    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    labels = viewer.add_labels((np.arange(32 * 32).reshape(32, 32) % 2).astype(np.uint8), name="flat labels")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, labels
    fin.base.value = "unet3d"
    assert fin.run() is None and "'unet3d' is a 3D model and 'flat' is a 2D image" in fin.controls.status.value


def test_labels_of_one_value_are_refused_before_training(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="empty")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, labels
    assert fin.run() is None and fin.controls.worker is None
    assert fin.controls.status.value.startswith("Labels 'empty' hold only the value 0: paint at least two")
    fin.sparse.value = True
    assert fin.run() is None and "hold no annotated pixel" in fin.controls.status.value


def test_grey_model_refused_for_rgb_training_images_unless_converted(make_napari_viewer):
    viewer = make_napari_viewer()
    s = sd.nuclei_2d(seed=0, shape=(48, 48))
    colour = viewer.add_image(np.stack([s["image"]] * 3, -1), name="colour", rgb=True)
    labels = viewer.add_labels(s["semantic"], name="truth")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = colour, labels
    fin.base.value = next(v for v in fin.base.choices if v.endswith("nuclei-unet"))
    fin.ask = lambda question: False
    assert fin.run() is None and fin.controls.worker is None
    assert "Nothing started: 'nuclei-unet' takes grey images and 'colour' is RGB" in fin.controls.status.value


def test_image_removed_while_segmenting(viewer_small, qtbot):
    viewer, image = viewer_small
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value, seg.tile.value = image, 64
    n = len(viewer.layers)
    assert seg.run() is not None
    viewer.layers.remove(image)
    _wait(qtbot, seg.controls)
    assert len(viewer.layers) == n - 1  # no result for a layer that is gone
    assert "image layer 'cells' was removed during the run" in seg.controls.status.value.lower()


def test_labels_removed_while_training_and_class_names(viewer_small, qtbot, monkeypatch):
    from napari_segsuite.widgets import finetune

    monkeypatch.setattr(finetune, "TrainConfig", functools.partial(finetune.TrainConfig, steps_per_epoch=3))
    viewer, image = viewer_small
    labels = viewer.layers["cells truth"]
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, labels
    fin.base.value, fin.epochs.value, fin.model_name.value = "unet", 1, "named"
    assert fin.class_names.edit.value == "" and not fin.class_names.save()  # a new model: named when trained
    fin.class_names.edit.value = "0: background, 1: nucleus"
    assert fin.run() is not None
    viewer.layers.remove(labels)
    _wait(qtbot, fin.controls)
    assert "layer 'cells truth' was removed during training" in fin.controls.status.value
    card = load_model(fin.last_path).card
    assert card.class_names == ["background", "nucleus"]
    assert fin.class_names.edit.value == "0: background, 1: nucleus"  # the new model, chosen to continue from


@pytest.fixture
def viewer_small(make_napari_viewer):
    viewer = make_napari_viewer()
    s = sd.nuclei_2d(seed=0, shape=(96, 96))
    image = viewer.add_image(s["image"], name="cells")
    viewer.add_labels(s["semantic"], name="cells truth")
    return viewer, image


# --- object tables ---
OBJECT_MODELS = [s for s in available() if s.kind != "semantic"]


def _random_model(spec):
    """An untrained model of ``spec`` and an image for it; map models' heads are set so that every
    pixel reads as object interior (objects to tabulate, whatever the weights)."""
    import torch

    if spec.spatial_dims == 3:
        s = sd.nuclei_3d(seed=0, shape=(8, 32, 32))
        model = model_for_training(spec.name, [s["image"]], [s["instances"]], base_filters=4)
    elif spec.kind == "panoptic":
        s = sd.panoptic_scene(seed=0, shape=(48, 48))
        model = model_for_training(spec.name, [s["image"]], [s["semantic"]], instances=[s["instances"]])
    else:
        s = sd.nuclei_2d(seed=0, shape=(48, 48))
        model = model_for_training(spec.name, [s["image"]], [s["instances"]])
    head = dict(model.module.named_modules()).get("head")
    if isinstance(head, torch.nn.Conv2d | torch.nn.Conv3d) and head.out_channels == 3:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    return model, s["image"]


def test_every_instance_result_has_a_features_table(make_napari_viewer, qtbot):
    """Every registry model of objects (instance, panoptic), untrained: each object it finds has a row
    with its area and centroid, and its class, score and class name where the model gives them."""
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    found = {}
    for spec in OBJECT_MODELS:
        model, data = _random_model(spec)
        path = _save(model, f"random {spec.name}")
        image = viewer.add_image(data, name=spec.name)
        seg.image.value, seg.model.value = image, path
        seg.run()
        _wait(qtbot, seg.controls)
        objects = viewer.layers[-1]
        assert objects.metadata["segsuite"]["role"] == "instances", (spec.name, seg.controls.status.value)
        table = objects.features
        axes = {f"centroid-{a}" for a in range(objects.data.ndim)}
        assert {"index", "area", *axes} <= set(table.columns), spec.name
        if spec.objects or spec.kind == "panoptic":
            assert {"class", "score", "class_name"} <= set(table.columns), spec.name
        ids, areas = np.unique(objects.data[objects.data > 0], return_counts=True)
        np.testing.assert_array_equal(table["index"], ids)
        np.testing.assert_array_equal(table["area"], areas)
        found[spec.name] = len(table)
    assert found["unet-instance"] > 0 and found["unet3d-instance"] > 0, found  # the default instance model's table


def test_class_names_from_the_finetune_widget_in_picker_and_features(make_napari_viewer, qtbot, monkeypatch):
    from napari_segsuite.progress import Progress
    from napari_segsuite.tasks import Segmentation
    from napari_segsuite.widgets import segment

    s = sd.panoptic_scene(seed=0, shape=(64, 64))
    path = _save(
        model_for_training("panoptic-deeplab", [s["image"]], [s["semantic"]], instances=[s["instances"]]), "pan"
    )
    viewer = make_napari_viewer()
    image = viewer.add_image(s["image"], name="scene")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    fin.base.value = path
    assert fin.class_names.edit.value == "0: class 0, 1: class 1, 2: class 2, 3: class 3"
    fin.class_names.edit.value = "0: background, 1: tissue, 2: cell, 3: rod"
    assert fin.class_names.save()
    assert load_model(path).card.class_names == ["background", "tissue", "cell", "rod"]
    assert any(text.startswith("pan (") and "tissue, cell, rod" in text for text in _picker(seg))
    fin.class_names.edit.value = "7: ghost"
    assert not fin.class_names.save() and "Class value 7 not in the model 'pan'" in fin.controls.status.value

    def known(model, data, **kwargs):  # two objects of classes 2 and 3, whatever the weights
        yield Progress(1, 1, "tiles")
        ids = np.zeros((64, 64), np.int32)
        ids[5:15, 5:15], ids[30:40, 30:36] = 1, 2
        sem = np.where(ids == 1, 2, np.where(ids == 2, 3, 0)).astype(np.uint8)
        feats = {"index": np.array([1, 2]), "class": np.array([2, 3]), "score": np.array([0.9, 0.7], np.float32)}
        return Segmentation(semantic=sem, instances=ids, features=feats)

    monkeypatch.setattr(segment, "segment", known)
    seg.image.value, seg.model.value = image, path
    seg.run()
    _wait(qtbot, seg.controls)
    table = viewer.layers["scene · pan objects"].features
    assert list(table["class_name"]) == ["cell", "rod"] and list(table["area"]) == [100, 60]
    assert list(table["centroid-0"]) == [9.5, 34.5]


def test_finetune_shows_the_training_plan_before_train(make_napari_viewer, qtbot):
    """The crop, batch, epoch length and learning rate training would pick are on the dock before Train is
    pressed, from the engine's own plan, and follow the model and the limits the user picks."""
    from napari_segsuite.plan import preview
    from napari_segsuite.training import TrainConfig

    viewer, [(_, fin)] = _laptop_viewer(make_napari_viewer, qtbot, "Fine-tune")
    fin.base.value = "unet"
    shape = viewer.layers[0].data.shape
    expected = preview("unet", [shape], TrainConfig(epochs=fin.epochs.value)).describe()
    assert expected in fin.plan_note.value
    fin.minutes.value = 2.0
    assert "2 min" in fin.plan_note.value
    fin.base.value = "maskrcnn"
    assert "128" in fin.plan_note.value and expected not in fin.plan_note.value  # object models crop 128 px
