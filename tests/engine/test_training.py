import time

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.inference import predict
from napari_segsuite.io import load_model, new_model
from napari_segsuite.progress import drive
from napari_segsuite.tasks import semantic
from napari_segsuite.training import TrainConfig, train


def _nuclei(seeds):
    data = [sd.nuclei_2d(seed=s) for s in seeds]
    return [d["image"] for d in data], [d["semantic"] for d in data]


def test_unet_learns_nuclei_within_60_s():
    """From random weights, 40 s of CPU training; foreground Dice on 3 unseen images must reach 0.85.

    An untrained or broken model scores near 0.25 (the nuclei cover about 20 % of the image).
    """
    images, labels = _nuclei(range(6))
    test_images, test_labels = _nuclei(range(100, 103))
    model = new_model("unet", label_values=[0, 1])
    t0 = time.monotonic()
    result = drive(train(model, images, labels, TrainConfig(time_budget=40, patch_size=128, seed=0)))
    assert time.monotonic() - t0 < 60
    assert result.stopped in ("time budget", "epochs", "early stopping")
    cm = sum(semantic.confusion(drive(predict(result.model, im, output="classes")), lab, 2)
             for im, lab in zip(test_images, test_labels))
    dice = semantic.metrics_from_confusion(cm)["dice"]
    assert dice >= 0.85, dice


def test_cancel_returns_a_loadable_best_model(tmp_path):
    images, labels = _nuclei([0, 1])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    steps = []

    def cancel():
        return len(steps) >= 3  # cancel in the middle of the first epoch

    gen = train(model, images, labels, TrainConfig(patch_size=64, steps_per_epoch=20, epochs=5),
                cancel=cancel, checkpoint=tmp_path / "ckpt")
    result = drive(gen, lambda p: steps.append(p))
    assert result.stopped == "cancelled"
    assert result.model.card["training"]["steps"] == 3
    assert result.model.card["metrics"]["mean_iou"] is not None
    loaded = load_model(tmp_path / "ckpt")  # the checkpoint written during training loads
    assert loaded.card["label_values"] == [0, 1]


def test_time_budget_stops_training():
    images, labels = _nuclei([0, 1])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    t0 = time.monotonic()
    result = drive(train(model, images, labels, TrainConfig(time_budget=3, epochs=1000, patch_size=64)))
    assert result.stopped == "time budget"
    assert time.monotonic() - t0 < 15


def test_labels_with_unknown_values_are_refused():
    images, labels = _nuclei([0])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    bad = labels[0].copy()
    bad[:3, :3] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        drive(train(model, images, [bad], TrainConfig(epochs=1)))


def test_shape_mismatch_names_the_image():
    images, labels = _nuclei([0])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    with pytest.raises(ValueError, match="cells.*pick the labels"):
        drive(train(model, images, [labels[0][:100]], TrainConfig(epochs=1), names=["cells"]))


def test_volume_and_small_single_image_train():
    vol = sd.nuclei_3d(seed=0, shape=(6, 48, 48))
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    result = drive(train(model, [vol["image"]], [vol["semantic"]], TrainConfig(epochs=1, steps_per_epoch=2)))
    assert result.model.card["training"]["samples"] == 6  # one per slice
    single = sd.nuclei_2d(seed=3, shape=(40, 40))
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    result = drive(train(model, [single["image"]], [single["semantic"]], TrainConfig(epochs=1, steps_per_epoch=2)))
    assert np.isfinite(result.history[0]["train_loss"])
