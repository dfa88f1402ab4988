import numpy as np
import pytest
import torch

from napari_segsuite.tasks import semantic


def test_metrics_hand_computed():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    m = semantic.metrics(pred, gt, 2)
    # class 0: tp 3, fp 1, fn 1 -> IoU 3/5; class 1: tp 3, fp 1, fn 1 -> IoU 3/5
    assert m["iou_per_class"] == pytest.approx([0.6, 0.6])
    assert m["mean_iou"] == pytest.approx(0.6)
    assert m["dice"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)


def test_absent_class_is_none_and_left_out_of_mean():
    gt = np.array([0, 0, 1, 1])
    m = semantic.metrics(gt, gt, 3)
    assert m["iou_per_class"][2] is None
    assert m["mean_iou"] == pytest.approx(1.0)


def test_ignored_pixels_are_skipped_by_metrics_and_loss():
    gt = np.array([0, 1, semantic.IGNORE])
    assert semantic.metrics(np.array([0, 1, 0]), gt, 2)["mean_iou"] == pytest.approx(1.0)
    logits = torch.randn(1, 3, 8, 8)
    t1 = torch.randint(0, 3, (1, 8, 8))
    t1[:, :4] = semantic.IGNORE
    t2 = t1.clone()
    t2[:, :4] = semantic.IGNORE
    base = semantic.loss_fn(logits, t1)
    # whatever the ignored pixels' logits are, the loss does not change
    logits2 = logits.clone()
    logits2[:, :, :4] = 100 * torch.randn(1, 3, 4, 8)
    assert semantic.loss_fn(logits2, t2) == pytest.approx(float(base), rel=1e-5)


def test_loss_lower_for_correct_prediction():
    t = torch.randint(0, 2, (2, 16, 16))
    good = torch.nn.functional.one_hot(t, 2).movedim(-1, 1).float() * 10
    assert semantic.loss_fn(good, t) < semantic.loss_fn(-good, t)


def test_two_class_threshold_is_calibrated_on_validation_maps_and_used_by_postprocess():
    """Probabilities that under-call class 1 (true class 1 at p = 0.4): the calibrated threshold
    recovers it, argmax does not; a threshold that gains nothing is not kept."""
    from napari_segsuite.tasks.semantic import calibrate_threshold, postprocess

    rng = np.random.default_rng(0)
    truth = (rng.random((64, 64)) < 0.3).astype(np.int64)
    p1 = np.where(truth == 1, 0.4, 0.1) + rng.uniform(-0.05, 0.05, truth.shape)
    maps = np.stack([1 - p1, p1])
    t = calibrate_threshold([maps], [truth])
    assert t is not None and 0.1 < t <= 0.35
    assert (postprocess(maps, t) == truth).all() and (postprocess(maps) == 0).all()
    perfect = np.stack([1.0 - truth, truth.astype(float)])
    assert calibrate_threshold([perfect], [truth]) is None


def test_argmax0_is_numpys_argmax_ties_and_nans_included():
    from napari_segsuite.tasks.semantic import argmax0

    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 5):
        p = rng.random((k, 40, 30)).astype(np.float32)
        p[:, :4] = 0.5  # ties: the first class wins
        p[:, 4:8] = np.round(p[:, 4:8], 1)
        np.testing.assert_array_equal(argmax0(p), p.argmax(0))
        p[k - 1, 9, 9] = np.nan
        np.testing.assert_array_equal(argmax0(p), p.argmax(0))
        assert argmax0(p).dtype == np.int64
