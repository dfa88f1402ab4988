"""Correction clicks: a merged neighbour split off, a neighbour's pixels taken only where the click
changed the object, a rebuild on a huge window; the outline fitted to true objects."""

import time

import numpy as np

from napari_segsuite.annotate import AnnotationSession
from napari_segsuite.annotate.maps import fit_outline, maps_from_instances


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _merged_pair(shape=(64, 80), a=(32, 30), b=(32, 46), r=11.0):
    """Two nuclei the model saw as one (one instance, no dip of foreground between them); the truth
    parts them midway."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ra, rb = np.hypot(yy - a[0], xx - a[1]), np.hypot(yy - b[0], xx - b[1])
    fg = (1.0 / (1.0 + np.exp((np.minimum(ra, rb) - r) / 1.0))).astype(np.float32)
    union = np.minimum(ra, rb) <= r
    maps = maps_from_instances(np.zeros(shape, np.float32), union.astype(np.int32), fg)
    maps.outline = 0.5
    return maps, union & (ra <= rb), union & (rb < ra)


def test_a_negative_click_in_a_merged_neighbour_splits_it_off():
    maps, left, right = _merged_pair()
    s = AnnotationSession(maps=maps)
    s.add_click(32, 30)
    first = s.labels == 1
    assert _iou(first, left) < 0.6  # the model's merged object
    s.add_click(32, 50, positive=False)  # the centre of the neighbour's part (off the ridge of the pair)
    after = s.labels == 1
    assert _iou(after, left) > 0.85  # (the old watershed on the pair's distance left the click ~a third)
    assert not (after & ~first).any()  # a negative click only takes away


def test_another_objects_pixels_are_taken_only_where_the_click_changes_the_object():
    maps, left, right = _merged_pair()
    labels = np.where(right | (left & (np.arange(80)[None, :] >= 36)), 5, 0).astype(np.int32)  # 5 overgrew
    s = AnnotationSession(labels=labels, maps=maps)
    s.add_click(32, 30)  # the merged object, on the free pixels only
    s.add_click(32, 37, positive=True, new_object=False)  # "this pixel is mine": on object 5's pixels
    assert s.labels[32, 37] == s.active
    assert (s.labels[right] == 5).all()  # not all of object 5 that the model's object covers


def test_a_rebuild_on_a_huge_object_stays_fast():
    h = 2048
    yy, xx = np.mgrid[:h, :h]
    d1, d2 = np.hypot(yy - 1024, xx - 700), np.hypot(yy - 1024, xx - 1450)
    inst = np.where(d1 < 450, 1, np.where(d2 < 350, 2, 0)).astype(np.int32)
    fg = np.clip(1.2 - np.minimum(d1 / 450, d2 / 350), 0, 1).astype(np.float32)
    s = AnnotationSession(maps=maps_from_instances(np.zeros((h, h), np.float32), inst, fg))
    s.add_click(1024, 700)
    t0 = time.perf_counter()
    s.add_click(1024, 1450, positive=True, new_object=False)  # the neighbour is this object too: a rebuild of both
    took = time.perf_counter() - t0
    assert (s.labels[d1 < 300] == s.active).all() and (s.labels[d2 < 250] == s.active).mean() > 0.95
    assert took < 0.6  # 1.7 s before (about 0.1 s on a free core)


def test_fit_outline_picks_the_level_of_the_true_outline():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    fg = (1.0 / (1.0 + np.exp((r - 11.0) / 1.5))).astype(np.float32)
    maps = maps_from_instances(np.zeros((64, 64), np.float32), (fg > 0.3).astype(np.int32), fg)
    for level in (0.5, 0.8):
        assert fit_outline([(maps, (fg > level).astype(np.int32))]) == level
    assert fit_outline([(maps, np.zeros((64, 64), np.int32))]) is None
