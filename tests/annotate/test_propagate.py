"""Z-propagation on a synthetic volume: a blob over slices 3..9 seeded on slice 6."""

import numpy as np
import pytest

from napari_segsuite.annotate.edit import apply
from napari_segsuite.annotate.maps import PlaneMaps
from napari_segsuite.annotate.propagate import joined, propagate


def _volume(shape=(14, 64, 64), seed=0):
    """A bright ellipsoid (id 1) over slices 3..9, a labelled neighbour (id 2) touching it on every
    slice, and an unlabelled bright blob touching it on the other side."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    blob = ((zz - 6) / 3.6) ** 2 + ((yy - 32) / 12) ** 2 + ((xx - 28) / 12) ** 2 <= 1
    neighbour = ((yy - 32) / 9) ** 2 + ((xx - 48) / 9) ** 2 <= 1
    neighbour &= ~blob & (zz >= 1) & (zz <= 11)
    stranger = (((yy - 32) / 8) ** 2 + ((xx - 9) / 8) ** 2 <= 1) & ~blob & (zz >= 2) & (zz <= 10)
    rng = np.random.default_rng(seed)
    image = 100.0 + 400.0 * (blob | neighbour | stranger) + rng.normal(0, 25, shape)
    truth = np.zeros(shape, np.int32)
    truth[blob] = 1
    truth[neighbour] = 2
    return image.astype(np.float32), truth, stranger


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_blob_seeded_on_one_slice_is_recovered_and_stops_at_its_ends():
    image, truth, stranger = _volume()
    assert (truth == 1).any(axis=(1, 2)).nonzero()[0].tolist() == list(range(3, 10))
    labels = np.where(truth == 2, 2, 0).astype(np.int32)
    labels[6][truth[6] == 1] = 1  # the user drew it on slice 6
    edits = propagate(labels, image, 1, 6)
    assert sorted(e.z0 for e in edits) == [3, 4, 5, 7, 8, 9]  # it ends where the blob ends
    out = labels.copy()
    for e in edits:
        apply(out, e)
    assert _iou(out == 1, truth == 1) >= 0.8
    np.testing.assert_array_equal(out == 2, labels == 2)  # the neighbour is untouched
    assert (out == 1)[stranger].sum() < 0.05 * (truth == 1).sum()  # no leak into the unlabelled blob
    idx, values = joined(edits)  # one write for all slices
    again = labels.copy()
    again[idx] = values
    np.testing.assert_array_equal(again, out)


def test_propagation_from_a_corrected_slice_in_one_direction_and_with_maps():
    image, truth, _ = _volume()
    labels = np.zeros_like(truth)
    labels[7][truth[7] == 1] = 1
    labels[4:6][truth[4:6] == 1] = 1  # an old, wrong attempt below is recomputed
    labels[5, 0:3, 0:3] = 1
    up = propagate(labels, image, 1, 7, directions=(1,))
    assert sorted(e.z0 for e in up) == [8, 9]
    down = propagate(labels, image, 1, 7, directions=(-1,), max_slices=2)
    out = labels.copy()
    for e in down:
        apply(out, e)
    assert sorted(e.z0 for e in down) == [5, 6] and not out[5, 0:3, 0:3].any()

    def maps(z):  # a model that sees the blob (and the stranger) as foreground
        fg = (truth[z] == 1).astype(np.float32)
        return PlaneMaps(smooth=np.zeros(fg.shape, np.float32), fg=fg)

    labels = np.zeros_like(truth)
    labels[6][truth[6] == 1] = 1
    edits = propagate(labels, np.zeros_like(image), 1, 6, maps=maps)
    out = labels.copy()
    for e in edits:
        apply(out, e)
    assert _iou(out == 1, truth == 1) >= 0.9
    with pytest.raises(ValueError, match="not on slice"):
        propagate(labels, image, 1, 2)
