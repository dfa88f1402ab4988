"""Clicks on a model's soft foreground: the first click's outline, edge corrections in click order."""

import numpy as np

from napari_segsuite.annotate import AnnotationSession
from napari_segsuite.annotate.maps import maps_from_instances, smooth_image


def _soft_disk(shape=(64, 64), centre=(32, 32), radius=11.0, width=1.5):
    """A model's blurry object: foreground 0.5 at ``radius``, its object (the instance) thresholded there."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1])
    fg = (1.0 / (1.0 + np.exp((r - radius) / width))).astype(np.float32)
    image = (100 + 400 * fg).astype(np.float32)
    maps = maps_from_instances(smooth_image(image), (fg > 0.5).astype(np.int32), fg)
    return image, maps, r


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_the_first_click_outlines_the_object_at_the_outline_level():
    image, maps, _ = _soft_disk()
    maps.outline = 0.7
    s = AnnotationSession(image, maps=maps)
    s.add_click(32, 32)
    assert (s.labels == 1).sum() == (maps.fg > 0.7).sum() < (maps.instances == 1).sum()
    weak = maps_from_instances(maps.smooth, maps.instances, 0.6 * maps.fg)  # an object the model is unsure of
    weak.outline = 0.7
    s1 = AnnotationSession(image, maps=weak)
    s1.add_click(32, 32)
    assert ((s1.labels == 1) == (maps.fg > 0.7)).all()  # outlined as its peak goes, not at 0.7 absolute
    maps.outline = None  # no outline level: the model's own object
    s2 = AnnotationSession(image, maps=maps)
    s2.add_click(32, 32)
    assert ((s2.labels == 1) == (maps.instances == 1)).all()


def test_a_negative_click_near_the_edge_trims_the_edge_there_and_keeps_the_rest():
    image, maps, r = _soft_disk()
    maps.outline = 0.5
    truth = (maps.fg > 0.5) & (np.arange(64)[None, :] < 32 + 10)  # the true object is flat on its right
    s = AnnotationSession(image, maps=maps)
    s.add_click(32, 32)
    first = s.labels == 1
    s.add_click(32, 42, positive=False)  # in the cap the model added
    after = s.labels == 1
    assert _iou(after, truth) > max(0.98, _iou(first, truth)) and not after[32, 42]
    far = first & (np.arange(64)[None, :] < 30)  # the left half, far from the click, stays as it was
    assert after[far].all()  # (moving the whole outline's threshold took a ring all round)
    done = s.labels.copy()
    edit = s.add_click(32, 30, positive=True)  # a click that lands already right changes nothing
    assert not edit.changed and (s.labels == done).all()


def test_a_positive_click_just_outside_adds_the_missed_edge_there():
    image, maps, r = _soft_disk((96, 96), (48, 48), radius=20.0)
    maps.outline = 0.7
    x = np.arange(96)[None, :]
    truth = (maps.fg > 0.7) | ((r <= 19.5) & (x < 34))  # the true object reaches a pixel further on the left
    s = AnnotationSession(image, maps=maps)
    s.add_click(48, 48)
    first = s.labels == 1
    s.add_click(48, 29, positive=True)
    after = s.labels == 1
    assert after[48, 29] and _iou(after, truth) > _iou(first, truth)
    assert (after[:, 48:] == first[:, 48:]).all()  # the right side is untouched


def test_a_correction_does_not_undo_the_click_before_it():
    image, maps, _ = _soft_disk()
    maps.outline = 0.7
    s = AnnotationSession(image, maps=maps)
    s.add_click(32, 32)
    s.add_click(32, 22, positive=True)  # a pixel out on the left: taken in
    assert s.labels[32, 22] == 1
    s.add_click(31, 22, positive=False)  # its neighbour is not the object: out, the positive click stays in
    assert s.labels[31, 22] == 0 and s.labels[32, 22] == 1


def test_a_negative_click_on_a_strip_along_the_image_edge_trims_the_strip():
    image, maps, _ = _soft_disk(centre=(58, 32))  # an object cut by the image's bottom edge
    maps.outline = 0.7
    s = AnnotationSession(image, maps=maps)
    s.add_click(56, 32)
    first = s.labels == 1
    s.add_click(63, 32, positive=False)  # the bottom row is not the object
    lost = first & (s.labels != 1)
    assert lost[63, 32] and not lost[:63].any()  # no split through the object (it took 4 rows)


def test_a_correction_on_a_tiny_object_stays_small_and_near_the_click():
    image, maps, _ = _soft_disk((32, 32), (16, 16), radius=5.0, width=1.0)  # about 57 pixels outlined
    maps.outline = 0.7
    s = AnnotationSession(image, maps=maps)
    s.add_click(16, 16)
    first = s.labels == 1
    x = int(np.nonzero(first[16])[0].min()) - 1
    s.add_click(16, x, positive=True)  # just outside on the left
    ys, xs = np.nonzero(first ^ (s.labels == 1))
    assert s.labels[16, x] == 1 and len(ys) <= 0.2 * first.sum()  # not a ring all round (24 pixels)
    assert np.hypot(ys - 16, xs - x).max() <= 3


def test_clicks_start_from_the_distance_maps_objects_where_a_card_chose_the_interior_map():
    from napari_segsuite import sample_data as sd
    from napari_segsuite.annotate.maps import _click_card
    from napari_segsuite.workflows import model_for_training

    smp = sd.nuclei_2d(seed=0, shape=(32, 32))
    model = model_for_training("unet-instance", [smp["image"]], [smp["instances"]], base_filters=4, depth=2)
    pp = {
        "use_distance": False,
        "interior_threshold": 0.6,
        "seed_h": 0.25,
        "mask_threshold": 0.4,
        "seed_threshold": 0.5,
    }
    card = model.card.model_copy(update={"postprocessing": pp})
    assert _click_card(card).postprocessing == {"mask_threshold": 0.4}
    three = card.model_copy(update={"build": {**card.build, "distance": False}})
    assert _click_card(three) is three  # no distance map: as the card says
    assert card.postprocessing == pp


def test_a_negative_click_at_the_objects_edge_near_the_image_edge_keeps_the_image_edge_row():
    yy, xx = np.mgrid[:64, :64]
    obj = np.hypot(yy - 58, xx - 32) <= 11  # cut by the image's bottom edge; a flat foreground: no threshold move
    image = (100 + 400 * obj).astype(np.float32)
    maps = maps_from_instances(smooth_image(image), obj.astype(np.int32))
    s = AnnotationSession(image, maps=maps)
    s.add_click(56, 32)
    first = s.labels == 1
    x0 = int(np.nonzero(first[62])[0].min())
    s.add_click(62, x0, positive=False)  # on the object's left edge, a row above the image's edge
    lost = first & (s.labels != 1)
    assert lost[62, x0] and lost.sum() <= 10
    assert not lost[:, x0 + 2 :].any()  # not a strip along the image's bottom row (it took 3 pixels there)
