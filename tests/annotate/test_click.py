"""The click and box engine on synthetic planes: new ids, "not this", refinement, boxes, models, volumes."""

import numpy as np
import pytest

from napari_segsuite.annotate import AnnotationSession, compute_maps
from napari_segsuite.annotate.maps import maps_from_instances, smooth_image
from napari_segsuite.progress import drive


def _disks(centres, r=10, shape=(96, 96)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    rng = np.random.default_rng(0)
    image = 100.0 + 400.0 * (ids > 0) + rng.normal(0, 20, shape)
    return image.astype(np.float32), ids


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_click_adds_the_object_under_it_with_the_next_free_id():
    image, truth = _disks([(30, 30), (30, 70), (70, 50)])
    labels = np.zeros_like(truth)
    labels[90:, 90:] = 5  # an object the user drew
    s = AnnotationSession(image, labels)
    edit = s.add_click(30, 30)
    assert edit.object_id == 6 and s.active == 6
    assert _iou(s.labels == 6, truth == 1) > 0.9
    assert (s.labels[90:, 90:] == 5).all()
    ys, xs = edit.indices()  # only what changed, in plane coordinates
    assert (edit.values() == 6).all() and set(zip(ys.tolist(), xs.tolist())) == set(zip(*np.nonzero(s.labels == 6)))
    s.add_click(70, 50)  # away from the active object: a new one
    assert s.active == 7 and _iou(s.labels == 7, truth == 3) > 0.9


def test_negative_click_removes_an_object_or_takes_away_from_the_active_one():
    image, truth = _disks([(40, 30), (40, 52)], r=12)  # two touching disks, the model merged them
    merged = (truth > 0).astype(np.int32)
    maps = maps_from_instances(smooth_image(image), merged)
    s = AnnotationSession(image, maps=maps)
    s.add_click(40, 28)
    assert _iou(s.labels == 1, truth > 0) > 0.9  # the model's object, as it is
    s.add_click(40, 56, positive=False)  # not this: the neighbour
    assert _iou(s.labels == 1, truth == 1) > 0.85
    assert s.labels[40, 56] == 0
    s.finish()
    edit = s.remove(40, 28)  # a negative click with nothing active deletes the object under it
    assert not s.labels.any() and edit.changed
    s.add_click(40, 28)
    s.finish()
    s.add_click(40, 30, positive=False)
    assert not s.labels.any()


def test_a_second_positive_click_adds_a_missed_part():
    image, truth = _disks([(48, 48)], r=16)
    halves = np.where(truth > 0, 1 + (np.arange(96)[None, :] >= 48), 0).astype(np.int32)  # the model split it
    s = AnnotationSession(image, maps=maps_from_instances(smooth_image(image), halves))
    s.add_click(48, 38)
    first = _iou(s.labels == 1, truth == 1)
    s.add_click(48, 58, new_object=False)  # on the model's other object: Shift-click, add to this one
    assert s.active == 1 and first < 0.6 < 0.95 < _iou(s.labels == 1, truth == 1)


def test_box_adds_the_objects_inside_it_without_and_with_maps():
    image, truth = _disks([(25, 25), (25, 70), (70, 70)])
    s = AnnotationSession(image)
    s.box(5, 50, 92, 92)
    ids = np.unique(s.labels[s.labels > 0])
    assert len(ids) == 2 and not s.labels[:, :50].any()
    for i in ids:
        assert max(_iou(s.labels == i, truth == t) for t in (2, 3)) > 0.85
    s2 = AnnotationSession(image, maps=maps_from_instances(smooth_image(image), truth))
    s2.labels[70, 70] = 9  # a pixel someone drew is kept
    s2.box(0, 0, 50, 50)
    assert set(np.unique(s2.labels)) == {0, 9, 10} and _iou(s2.labels == 10, truth == 1) > 0.95
    with pytest.raises(ValueError, match="holds no pixels"):
        s2.box(200, 200, 300, 300)


def test_a_model_maps_once_and_clicks_read_them():
    from napari_segsuite import sample_data as sd
    from napari_segsuite.workflows import model_for_training

    smp = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = model_for_training("unet-instance", [smp["image"]], [smp["instances"]], base_filters=4, depth=2)
    maps = drive(compute_maps(model, smp["image"], device="cpu"))
    assert maps.kind == "maps" and maps.fg.shape == (64, 64) and maps.instances.dtype == np.int32
    s = AnnotationSession(smp["image"], maps=maps)
    y, x = np.argwhere(smp["instances"] > 0)[0]
    s.add_click(y, x)
    assert s.labels[y, x] == 1  # an untrained model still gives the clicked pixel an object


def test_deepmask_answers_each_click():
    from napari_segsuite import sample_data as sd
    from napari_segsuite.workflows import model_for_training

    smp = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = model_for_training("deepmask", [smp["image"]], [smp["instances"]])
    maps = drive(compute_maps(model, smp["image"], device="cpu"))
    assert maps.kind == "point"
    s = AnnotationSession(smp["image"], maps=maps)
    y, x = np.argwhere(smp["instances"] > 0)[0]
    s.add_click(y, x)
    assert s.labels[y, x] == 1


def test_one_slice_of_a_volume():
    image, truth = _disks([(30, 30), (60, 60)])
    volume = np.stack([np.full_like(image, 100.0), image, np.full_like(image, 100.0)])
    labels = np.zeros(volume.shape, np.int32)
    s = AnnotationSession(volume[1], labels[1])
    edit = s.add_click(60, 60)
    labels[edit.indices(1)] = edit.values()
    assert _iou(labels[1] == 1, truth == 2) > 0.9 and not labels[[0, 2]].any()
    with pytest.raises(ValueError, match="outside the image"):
        s.add_click(500, 3)
