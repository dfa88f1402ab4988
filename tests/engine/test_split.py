"""Validation split of a single image or volume: the held-out slab holds the classes the rest holds."""

import numpy as np

from napari_segsuite.model_files import new_model
from napari_segsuite.samples import prepare_samples, split_samples


def _split(image: np.ndarray, labels: np.ndarray, arch: str):
    model = new_model(arch, label_values=[0, 1, 2])
    samples = prepare_samples(model, [image], [labels])
    return split_samples(samples, 0.2, np.random.default_rng(0))


def test_a_slab_of_background_alone_is_not_held_out():
    """Classes 1 and 2 in the upper left part only: the bottom rows (the old rule) hold background alone,
    which scores a model that finds nothing as perfect. A slab with the classes is held out instead."""
    lab = np.zeros((128, 160), np.uint8)
    lab[10:90:12, 4:30] = 1
    lab[15:95:12, 4:30] = 2
    img = lab.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, lab.shape).astype(np.float32)
    train, val, note = _split(img, lab, "unet")
    assert "last" not in note and set(np.unique(val[0].y)) >= {0, 1, 2}
    assert set(np.unique(train[0].y)) >= {0, 1, 2}
    assert val[0].x.size + train[0].x.size == 128 * 160


def test_volumes_may_hold_out_slices_and_alike_slabs_keep_the_bottom_rows():
    lab = np.zeros((40, 64, 64), np.uint8)
    lab[-8:, 10:50:8, 10:50] = 1
    lab[-8:, 14:54:8, 10:50] = 2
    train, val, note = _split(lab.astype(np.float32), lab, "unet3d")
    assert "last 8 slices along Z" in note and set(np.unique(val[0].y)) >= {1, 2}
    assert train[0].x.shape[1:] == (32, 64, 64)
    # every slab alike: the bottom rows, as before
    lab2 = np.tile((np.arange(96) % 3).astype(np.uint8), (96, 1))
    _, val2, note2 = _split(lab2.astype(np.float32), lab2, "unet")
    assert "last 19 pixels along Y" in note2 and val2[0].x.shape[-2:] == (19, 96)


def test_calibration_reads_the_training_part_of_a_single_image_too():
    """A slab of one image holds too few objects to choose post-processing alone: the training part joins
    the choice (not the score). Several validation images choose alone (no extra inference)."""
    from napari_segsuite.evaluation import calibration_helpers

    lab = np.zeros((128, 160), np.uint8)
    lab[10:120:12, 4:150] = 1
    img = lab.astype(np.float32)
    train, val, _ = _split(img, lab, "unet")
    assert calibration_helpers(val, train, 1) == train
    model = new_model("unet", label_values=[0, 1])
    samples = prepare_samples(model, [img] * 6, [lab] * 6)
    train, val, _ = split_samples(samples, 0.34, np.random.default_rng(0))
    assert len(val) > 1 and calibration_helpers(val, train, 6) == []
    two = prepare_samples(model, [img] * 2, [lab] * 2)
    train, val, _ = split_samples(two, 0.2, np.random.default_rng(0))
    assert len(val) == len(train) == 1 and calibration_helpers(val, train, 2) == []  # two whole images
