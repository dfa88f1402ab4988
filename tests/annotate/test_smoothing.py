"""Edge corrections leave a smooth outline: no notch or spur where the corrected strip ends."""

import numpy as np
from scipy import ndimage as ndi

from napari_segsuite.annotate.regions import edge_fix
from napari_segsuite.annotate.smoothing import smooth_correction

SQUARE = np.ones((3, 3), bool)


def _disk(shape=(48, 48), centre=(24, 24), radius=10.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def _near(shape, at, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - at[0], xx - at[1]) <= r


def test_a_positive_edge_correction_leaves_no_notch_where_its_strip_ends():
    mask = _disk()
    fg = np.ones(mask.shape, np.float32)  # a saturated map: nothing but geometry says where to stop
    at = (24 - 7, 24 + 8)  # just outside the disk, on a diagonal stretch of its edge
    assert not mask[at] and ndi.distance_transform_edt(~mask)[at] <= 1.5
    out, _ = edge_fix(mask, fg, at, True, 0.5, [(24, 24)])
    assert out[at] and (out >= mask).all()  # adds only, the clicked pixel included
    near = _near(mask.shape, at, 6)
    closed = ndi.binary_closing(np.pad(out, 2), SQUARE)[2:-2, 2:-2]
    assert (closed[near] == out[near]).all()  # no one-pixel notch left at the strip's ends
    assert not out[~_near(mask.shape, at, 9) & ~mask].any()  # and still a local correction


def test_a_negative_edge_correction_leaves_no_spur_where_its_strip_ends():
    mask = _disk(radius=11.0)
    fg = np.ones(mask.shape, np.float32)
    at = (24 - 11, 24)  # just inside the disk's edge, at its top
    assert mask[at] and ndi.distance_transform_edt(mask)[at] <= 1.5
    out, _ = edge_fix(mask, fg, at, False, 0.5, [(24, 24)])
    assert not out[at] and (out <= mask).all()  # takes away only, the clicked pixel included
    near = _near(mask.shape, at, 6)
    opened = ndi.binary_opening(np.pad(out, 2, mode="edge"), SQUARE)[2:-2, 2:-2]
    assert (opened[near] == out[near]).all()  # no one-pixel spur left at the strip's ends
    assert out[~_near(mask.shape, at, 9) & mask].all()


def test_smoothing_keeps_the_clicked_pixel_and_the_window_edge():
    mask = np.zeros((12, 12), bool)
    mask[:, :6] = True  # an object against the image's edge
    mask[5, 6] = True  # a one-pixel spur, clicked positive: it stays
    out = smooth_correction(mask, (5, 6), True, 2.0)
    assert out[5, 6] and (out[:, :6]).all() and out.sum() == mask.sum()
    out = smooth_correction(mask, (5, 4), False, 2.0)  # opened: the spur goes, the object's edge stays
    assert not out[5, 4] and not out[5, 6] and out[:, 0].all() and out[0, :6].all()


def test_a_negative_correction_on_a_thin_object_is_not_opened_away():
    """Opening a two-pixel-high object breaks off all of it near the click, not a spur: the
    correction stands as it is (the smoothing took 14 more pixels than the correction's 8)."""
    mask = np.zeros((24, 40), bool)
    mask[10:12, 5:31] = True  # a nucleus cut to two rows (by the image's edge, in real images)
    fg = np.ones(mask.shape, np.float32)
    at = (10, 18)
    out, _ = edge_fix(mask, fg, at, False, 0.5, [(11, 8)])
    assert not out[at] and (out <= mask).all()
    assert (mask & ~out).sum() <= 10  # the correction near the click only
    assert out[10:12, 13:16].all() and out[10:12, 21:24].all()  # its neighbours in the window stay
