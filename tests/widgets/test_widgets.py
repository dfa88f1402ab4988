"""Both dock widgets end to end in a real viewer (under Xvfb): segment, edit, fine-tune, pick."""

import os
from pathlib import Path

import numpy as np
import pytest

from napari_segsuite.model_files import load_model
from napari_segsuite.tasks import semantic

SHOTS = Path(os.environ.get("SEGSUITE_SCREENSHOTS", Path(__file__).parents[2] / "demo-output" / "test-screenshots"))


def _wait(qtbot, controls, timeout=120_000):
    qtbot.waitUntil(lambda: controls.worker is None, timeout=timeout)


@pytest.fixture
def viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-segsuite", "nuclei2d")
    return viewer


def test_segment_then_finetune_then_pick(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    image = viewer.layers["nuclei 2D"]
    seg.image.value = image
    assert seg.model.value is not None and "nuclei-unet" in seg.model.value
    n_layers = len(viewer.layers)

    assert seg.run() is not None
    _wait(qtbot, seg.controls)
    assert len(viewer.layers) == n_layers + 1
    result = viewer.layers[-1]
    assert result.name == "nuclei 2D · nuclei-unet"
    assert result.data.dtype == np.uint8 and result.data.shape == image.data.shape
    assert result.metadata["segsuite"]["model"] == "nuclei-unet"
    truth = viewer.layers["nuclei 2D ground truth (semantic)"].data
    assert semantic.metrics(result.data, truth, 2)["dice"] > 0.8

    # the user corrects a region with the brush: the layer is marked as edited
    result.selected_label = 1
    result.paint((20, 20), 1)
    assert result.metadata["segsuite"]["edited"]
    edited = result.data.copy()

    # a second run never overwrites the edited layer
    seg.run()
    _wait(qtbot, seg.controls)
    assert len(viewer.layers) == n_layers + 2
    np.testing.assert_array_equal(result.data, edited)

    # fine-tune the built-in model on the corrected layer
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value = image
    fin.trainset.labels_layer.value = result
    assert fin.trainset.add_pair()
    fin.base.value = seg.model.value
    fin.epochs.value = 1
    fin.model_name.value = "my nuclei"
    assert fin.run() is not None
    _wait(qtbot, fin.controls)
    assert "Saved 'my nuclei' · val mean IoU" in fin.controls.status.value, fin.controls.status.value
    assert len(fin.plot.loss) >= 10 and len(fin.plot.val_iou) == 1  # the live plot saw every step and the epoch

    # the new model is in Segment's picker without a restart, and selected
    assert seg.model.value.endswith("my nuclei")
    card = load_model(seg.model.value).card
    assert card.parent["name"] == "nuclei-unet" and card.label_values == [0, 1]

    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(str(SHOTS / "segment_finetune.png"), canvas_only=False)
    assert shot.std() > 5  # a real picture, not a blank frame


def test_finetune_cancel_keeps_best_model(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value = viewer.layers["nuclei 2D"]
    fin.trainset.labels_layer.value = viewer.layers["nuclei 2D ground truth (semantic)"]
    fin.base.value = "unet"
    fin.epochs.value = 500
    fin.model_name.value = "cancelled run"
    worker = fin.run()
    assert worker is not None
    qtbot.waitUntil(lambda: fin.controls.bar.value >= 3, timeout=60_000)
    fin.controls.cancel_btn.native.click()
    _wait(qtbot, fin.controls)
    assert fin.last_result.stopped == "cancelled"
    saved = load_model(fin.last_path)
    assert saved.card.training["stopped"] == "cancelled"
    assert Path(fin.last_path).name == "cancelled run"


def test_bad_pairs_give_a_message_and_start_nothing(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="wrong size")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value = viewer.layers["nuclei 2D"]
    fin.trainset.labels_layer.value = viewer.layers["wrong size"]
    assert fin.trainset._check_pair(fin.trainset.image.value, fin.trainset.labels_layer.value).startswith(
        "Labels layer 'wrong size' is 10x10"
    )
    assert fin.run() is None and fin.controls.worker is None


def test_segment_volume_current_slice_and_whole(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-segsuite", "nuclei3d")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    vol = viewer.layers["nuclei 3D"]
    seg.image.value = vol
    seg.run()
    _wait(qtbot, seg.controls)
    whole = viewer.layers[-1]
    assert whole.data.shape == vol.data.shape
    truth = viewer.layers["nuclei 3D ground truth (semantic)"].data
    assert semantic.metrics(whole.data, truth, 2)["dice"] > 0.6
    viewer.dims.set_current_step(0, 10)
    seg.current_slice.value = True
    seg.run()
    _wait(qtbot, seg.controls)
    one = viewer.layers[-1].data
    assert one.shape == vol.data.shape
    assert one[10].any() and not one[:10].any() and not one[11:].any()


TRAINABLE = list(__import__("napari_segsuite.models", fromlist=["x"]).available())


@pytest.mark.parametrize("spec", TRAINABLE, ids=lambda s: s.name)
def test_every_model_trains_and_segments_in_the_widgets(make_napari_viewer, qtbot, spec, monkeypatch):
    import functools

    from napari_segsuite import sample_data as sd
    from napari_segsuite.widgets import finetune

    if spec.spatial_dims == 3:  # a few steps of 3D crops: the widgets' path, not the learning, is under test
        monkeypatch.setattr(finetune, "TrainConfig", functools.partial(finetune.TrainConfig, steps_per_epoch=3))

    name = spec.name
    viewer = make_napari_viewer()
    # a 3D model learns from a volume (on a 2D image the widgets refuse it)
    s = sd.nuclei_3d(seed=0, shape=(8, 32, 32), n=3) if spec.spatial_dims == 3 else sd.nuclei_2d(seed=0, shape=(64, 64))
    image = viewer.add_image(s["image"], name="small")
    truth = viewer.add_labels(s["instances" if spec.kind == "instance" else "semantic"], name="small truth")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, truth
    fin.base.value = name
    assert fin.guide.value  # the picker explains what the model is for
    fin.epochs.value = 1
    fin.model_name.value = f"tiny {name}"
    assert fin.run() is not None
    _wait(qtbot, fin.controls)
    assert seg.model.value == fin.last_path, fin.controls.status.value
    seg.image.value = image
    seg.run()
    _wait(qtbot, seg.controls)
    out = viewer.layers[-1]
    suffix = " objects" if spec.kind == "panoptic" else ""  # panoptic: the classes layer, then the objects layer
    assert out.name == f"small · tiny {name}{suffix}" and out.data.shape == s["image"].shape


def test_one_round_train_segment_next_correct_finetune(viewer_with_sample, qtbot):
    """The human-in-the-loop round: train, segment the next image, correct it, fine-tune from the new model."""
    from napari_segsuite import sample_data as sd

    viewer = viewer_with_sample
    nxt = sd.nuclei_2d(seed=7)
    next_image = viewer.add_image(nxt["image"], name="next image")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value = viewer.layers["nuclei 2D"]
    fin.trainset.labels_layer.value = viewer.layers["nuclei 2D ground truth (semantic)"]
    fin.base.value = "unet"
    fin.epochs.value = 2
    fin.model_name.value = "round 1"
    fin.run()
    _wait(qtbot, fin.controls, 400_000)
    first = fin.last_path
    assert Path(first).name == "round 1" and fin.verdict.value == ""  # from scratch: no parent to compare with
    assert fin.base.value == first  # the next round continues from the new model

    assert fin.segment_next() is not None
    _wait(qtbot, fin.controls, 400_000)
    proposal = viewer.layers[-1]
    assert proposal.name == "next image · round 1" and fin.trainset.labels_layer.value is proposal
    assert fin.trainset.image.value is next_image
    # the user corrects the top-left quarter: the true labels painted in
    proposal.paint((5, 5), 1)  # a brush stroke marks the layer as edited...
    proposal.data[:128, :128] = nxt["semantic"][:128, :128]  # ...and the correction itself
    proposal.refresh()
    assert proposal.metadata["segsuite"]["edited"]
    assert fin.trainset.add_pair() and len(fin.trainset._pairs) == 2
    row = fin.trainset.pairs.data[1]  # the training-set table
    assert list(row[:2]) == ["next image", "next image · round 1"] and row[2] in ("", None)  # no objects layer
    assert row[3] == "256x256" and row[4].endswith("%")
    fin.model_name.value = "round 2"
    fin.run()
    _wait(qtbot, fin.controls, 400_000)
    card = load_model(fin.last_path).card
    assert card.parent["name"] == "round 1"
    comp = card.comparison
    assert comp["metric"] == "mean IoU" and 0 <= comp["parent"] <= 1 and 0 <= comp["new"] <= 1
    assert ("Better" if comp["better"] else "Worse") in fin.verdict.value
    assert fin.keep_parent_btn.visible == (not comp["better"])
    assert fin.plot.parent_score == pytest.approx(comp["parent"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(str(SHOTS / "finetune_round.png"), canvas_only=False)
    assert shot.std() > 5


def test_keep_parent_discards_the_new_model(viewer_with_sample, qtbot, monkeypatch):
    import functools

    from napari_segsuite.store import list_models
    from napari_segsuite.widgets import finetune

    # a learning rate far too high wrecks the model: the fine-tune comes out worse than its parent
    monkeypatch.setattr(finetune, "TrainConfig", functools.partial(finetune.TrainConfig, lr=50.0, steps_per_epoch=5))
    viewer = viewer_with_sample
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    fin.trainset.image.value = viewer.layers["nuclei 2D"]
    fin.trainset.labels_layer.value = viewer.layers["nuclei 2D ground truth (semantic)"]
    fin.base.value = next(v for v in fin.base.choices if v.endswith("nuclei-unet"))
    fin.epochs.value = 1
    fin.model_name.value = "worse"
    fin.run()
    _wait(qtbot, fin.controls, 400_000)
    assert "Worse than the parent" in fin.verdict.value and fin.keep_parent_btn.visible
    fin.keep_parent_btn.native.click()
    assert "worse" not in [m.name for m in list_models()]
    assert seg.model.value.endswith("nuclei-unet")


def test_panoptic_segment_edit_and_finetune(make_napari_viewer, qtbot):
    """Panoptic: Segment gives a class layer and an objects layer; edit one object; fine-tune on the edited pair."""
    from napari_segsuite import sample_data as sd
    from napari_segsuite.model_files import save_model
    from napari_segsuite.progress import drive
    from napari_segsuite.store import new_model_path
    from napari_segsuite.training import TrainConfig, train
    from napari_segsuite.workflows import model_for_training

    s = sd.panoptic_scene(seed=0, shape=(96, 96))
    model = model_for_training("panoptic-deeplab", [s["image"]], [s["semantic"]], instances=[s["instances"]])
    assert model.card.thing_classes == [2, 3]  # read from the classes under the objects
    res = drive(
        train(
            model,
            [s["image"]],
            [s["semantic"]],
            TrainConfig(epochs=1, steps_per_epoch=3, patch_size=64),
            instances=[s["instances"]],
        )
    )
    res.model.card.name = "pan"
    save_model(res.model, new_model_path("pan"))

    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(s["image"], name="scene")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value = image
    seg.model.value = next(v for v in seg.model.choices if v.endswith("pan"))
    seg.run()
    _wait(qtbot, seg.controls)
    classes, objects = viewer.layers["scene · pan"], viewer.layers["scene · pan objects"]
    assert classes.data.shape == objects.data.shape == (96, 96)
    assert objects.metadata["segsuite"]["run_id"] == classes.metadata["segsuite"]["run_id"]
    assert {"index", "class", "score", "class_name"} <= set(objects.features.columns)

    # the user draws one object of their own
    objects.selected_label = int(objects.data.max()) + 1
    objects.paint((30, 30), objects.selected_label)
    assert objects.metadata["segsuite"]["edited"]
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, classes
    fin.base.value = seg.model.value
    assert fin.trainset.add_pair() and fin.trainset._pairs[0][2] is objects  # the objects layer made with it goes along
    fin.epochs.value = 1
    fin.model_name.value = "pan tuned"
    fin.run()
    _wait(qtbot, fin.controls)
    card = load_model(fin.last_path).card
    assert card.parent["name"] == "pan" and card.kind == "panoptic"
    assert "val PQ" in fin.controls.status.value and fin.plot.metric_name == "PQ"
    SHOTS.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(SHOTS / "panoptic.png"), canvas_only=False)


def test_object_classes_from_layer_features(make_napari_viewer, qtbot):
    """An instance layer whose features give each object a class trains an object model with those classes."""
    import pandas as pd

    from napari_segsuite import sample_data as sd

    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    viewer = make_napari_viewer()
    image = viewer.add_image(s["image"], name="cells")
    ids = s["instances"]
    n = int(ids.max())
    objects = viewer.add_labels(ids, name="cells objects")
    objects.features = pd.DataFrame({"index": np.arange(1, n + 1), "class": [1 + i % 2 for i in range(n)]})
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, objects
    fin.base.value = "solo"
    fin.epochs.value = 1
    fin.run()
    _wait(qtbot, fin.controls)
    card = load_model(fin.last_path).card
    assert card.label_values == [0, 1, 2], fin.controls.status.value


def test_project_folder_saves_edits_and_reopens(viewer_with_sample, qtbot, tmp_path, make_napari_viewer):
    """A project keeps the set and every edit on disk: a restart (a new viewer) loses no annotation."""
    from napari_segsuite.project import Project

    viewer = viewer_with_sample
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    labels = viewer.layers["nuclei 2D ground truth (semantic)"]
    fin.trainset.image.value, fin.trainset.labels_layer.value = viewer.layers["nuclei 2D"], labels
    assert fin.trainset.add_pair()
    assert fin.trainset.open_project(tmp_path / "proj") is not None
    assert Project(tmp_path / "proj").names() == ["nuclei 2D"]  # the pair already in the set was saved
    labels.selected_label = 1
    labels.paint((100, 100), 1)  # an edit...
    labels.paint((120, 60), 1)
    qtbot.waitUntil(lambda: (Project(tmp_path / "proj").pairs()[0].labels == labels.data).all(), timeout=10_000)

    viewer2 = make_napari_viewer()  # ...survives a restart
    _, fin2 = viewer2.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin2.trainset.open_project(tmp_path / "proj")
    assert len(fin2.trainset._pairs) == 1
    np.testing.assert_array_equal(viewer2.layers["nuclei 2D labels"].data, labels.data)
    with pytest.raises(ValueError, match="not a segsuite project"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        Project(tmp_path / "other")


def test_model_store_in_the_segment_widget(make_napari_viewer, tmp_path):
    from napari_segsuite.model_files import new_model, save_model
    from napari_segsuite.store import list_models, model_dir

    m = new_model("unet", label_values=[0, 1], base_filters=4, depth=2)
    save_model(m, model_dir() / "cells")
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.model.value = next(v for v in seg.model.choices if v.endswith("cells"))
    assert seg.rename_selected("cells v2") is not None
    assert seg.model.value.endswith("cells v2")  # the picker follows
    out = seg.export_selected(tmp_path)
    assert out.name == "cells v2.segsuite.zip"
    assert not seg.delete_selected(confirm=lambda q: False)  # the user said no: nothing happens
    assert "cells v2" in [x.name for x in list_models()]
    assert seg.delete_selected(confirm=lambda q: "cannot be undone" in q)
    assert "cells v2" not in [x.name for x in list_models()]
    assert seg.import_file(out).name == "cells v2"
    assert seg.model.value.endswith("cells v2")
    seg.model.value = next(v for v in seg.model.choices if v.endswith("nuclei-unet"))
    assert seg.delete_selected(confirm=lambda q: True) is False  # built-in: refused


def test_pairs_from_folders(make_napari_viewer, tmp_path):
    from napari_segsuite.sample_data import write_samples

    made = write_samples(tmp_path, n_images=2)
    viewer = make_napari_viewer()
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    images, labels = made["nuclei2d"] / "images", made["nuclei2d"] / "semantic"
    assert fin.trainset.add_folders(images, labels) == 2
    assert (
        len(fin.trainset._pairs) == 2 and fin.trainset._pairs[0][1].data.shape == fin.trainset._pairs[0][0].data.shape
    )
    assert fin.trainset.pairs.shape == (2, 5) and fin.trainset.pairs.data[0][3] == "x".join(
        map(str, fin.trainset._pairs[0][1].data.shape)
    )
    fin.trainset._remove_selected([0])
    assert fin.trainset.pairs.shape[0] == 1 and len(fin.trainset._pairs) == 1
    assert fin.trainset.add_folders(tmp_path / "nowhere", labels) == 0
