"""Sparse annotation: label value 0 = not annotated, ignored by the loss; classes painted as 1..K."""

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.inference import predict
from napari_segsuite.progress import drive
from napari_segsuite.tasks import semantic
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import model_for_training


def _blocks_mask(shape, rng, block=32, keep=0.5):
    """True on a random half of the 32x32 blocks: the part the user annotated."""
    grid = rng.random((shape[0] // block + 1, shape[1] // block + 1)) < keep
    return np.kron(grid, np.ones((block, block), bool))[: shape[0], : shape[1]]


def _dice(model, data):
    cm = sum(semantic.confusion(drive(predict(model, d["image"], output="classes")), d["semantic"], 2) for d in data)
    return semantic.metrics_from_confusion(cm)["dice"]


def _fit(images, labels, sparse):
    model = model_for_training("unet", images, labels, sparse=sparse)
    cfg = TrainConfig(epochs=4, steps_per_epoch=25, patch_size=128, seed=0)
    return drive(train(model, images, labels, cfg)).model


def test_sparse_learns_like_dense_and_unannotated_pixels_are_ignored():
    rng = np.random.default_rng(0)
    data = [sd.nuclei_2d(seed=i) for i in range(6)]
    unseen = [sd.nuclei_2d(seed=200 + i) for i in range(3)]
    images = [d["image"] for d in data]
    dense = [d["semantic"] + 1 for d in data]  # 1 background, 2 nucleus
    masks = [_blocks_mask(lab.shape, rng) for lab in dense]
    sparse = [np.where(m, lab, 0) for lab, m in zip(dense, masks)]
    # the same un-annotated half, labelled wrongly (foreground and background swapped)
    wrong = [np.where(m, lab, 3 - lab) for lab, m in zip(dense, masks)]

    dense_model = _fit(images, dense, sparse=False)
    sparse_model = _fit(images, sparse, sparse=True)
    wrong_model = _fit(images, wrong, sparse=False)
    assert sparse_model.card.label_values == [1, 2] and sparse_model.card.unannotated_value == 0
    assert sparse_model.card.training["labelled_pixels"] < 0.6 * sparse_model.card.training["pixels"]

    d_dense, d_sparse, d_wrong = (_dice(m, unseen) for m in (dense_model, sparse_model, wrong_model))
    assert d_dense >= 0.85 and d_sparse >= 0.85, (d_dense, d_sparse)
    assert abs(d_dense - d_sparse) <= 0.05, (d_dense, d_sparse)
    # those pixels matter when they are trusted: wrong labels there ruin the model, 0 there does not
    assert d_wrong < d_sparse - 0.1, (d_wrong, d_sparse)
    # the sparse model writes only painted values back
    out = drive(predict(sparse_model, unseen[0]["image"]))
    assert set(np.unique(out)) <= {1, 2}


def test_sparse_needs_two_painted_classes():
    d = sd.nuclei_2d(seed=0, shape=(64, 64))
    with pytest.raises(ValueError, match="at least two painted classes"):
        model_for_training("unet", [d["image"]], [d["semantic"]], sparse=True)  # only 0 and 1 painted


def test_sparse_instance_labels_ignore_unannotated_pixels():
    """Instance rule: 0 not annotated, 1 background, 2.. objects. Unannotated pixels are IGNORE in the
    targets (whatever lies under them), painted background is background, objects keep their shape."""
    from napari_segsuite.samples import prepare_samples
    from napari_segsuite.workflows import model_for_training

    s = sd.nuclei_2d(seed=0, shape=(96, 96))
    ids = s["instances"]
    sparse = np.where(ids > 0, ids + 1, 1)  # dense annotation in the sparse encoding...
    sparse[:, 48:] = 0  # ...with the right half left unannotated
    model = model_for_training("unet-instance", [s["image"]], [sparse], sparse=True)
    (sample,) = prepare_samples(model, [s["image"]], [sparse])
    assert (sample.y[..., 48:] == -1).all()  # ignored (classes and distances), though objects lie there
    dense = prepare_samples(model_for_training("unet-instance", [s["image"]], [ids]), [s["image"]], [ids])[0]
    inner = slice(None), slice(0, 44)  # away from the cut, the class targets equal the dense ones
    np.testing.assert_array_equal(sample.truth.classes[inner], dense.truth.classes[inner])
    obj = model_for_training("solo", [s["image"]], [sparse], sparse=True)
    (os_,) = prepare_samples(obj, [s["image"]], [sparse])
    assert (os_.y[0][:, 48:] == -1).all() and set(np.unique(os_.y[0][:, :48])) <= set(np.unique(ids))


def test_evaluation_reads_ground_truth_ids_plainly_for_a_sparse_model():
    """The sparse rule (0 not annotated, 1 background) is for training labels; evaluation against ground
    truth (0 background, 1..N objects) must not shift the ids or hide the background."""
    from napari_segsuite.tasks import get_task

    model = model_for_training(
        "unet-instance",
        [np.zeros((32, 32), np.float32)],
        [np.ones((32, 32), np.int32)],
        sparse=True,
        depth=2,
        base_filters=4,
    )
    ids = np.zeros((1, 32, 32), np.int32)
    ids[0, 4:10, 4:10], ids[0, 20:28, 20:28] = 1, 2
    task = get_task(model.card.kind)
    truth = task.targets(model, ids, None, per_slice=True, name="gt", strict=False)
    assert (truth.ids == ids).all()
    training = task.targets(model, ids, None, per_slice=True, name="gt", strict=True)
    assert (training.ids[ids == 0] == -1).all() and training.ids.max() == 1  # training's rule
