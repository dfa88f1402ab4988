"""Object editing on synthetic label planes and volumes: exact pixels, other objects untouched."""

import numpy as np
import pytest

from napari_segsuite.annotate.edit import (
    apply,
    delete,
    fill_holes,
    line_pixels,
    merge,
    remove_small,
    split_by_line,
    split_by_seeds,
)


def _two_disks(shape=(40, 60), r=9, centres=((20, 16), (20, 32))):
    """Two round objects touching at a neck, as one object 1, and a bystander object 7."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for cy, cx in centres:
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    lab[0:3, 0:3] = 7
    return lab


def _applied(lab, edit, z=None):
    return apply(lab.copy(), edit, z)


def test_merge_two_objects_into_the_first():
    lab = np.zeros((10, 10), np.int32)
    lab[1:3, 1:3], lab[5:8, 5:8], lab[0, 9] = 2, 4, 3
    out = _applied(lab, merge(lab, 2, 4))
    expect = lab.copy()
    expect[expect == 4] = 2
    np.testing.assert_array_equal(out, expect)
    with pytest.raises(ValueError, match="two different"):
        merge(lab, 2, 2)
    with pytest.raises(ValueError, match="no object 5"):
        merge(lab, 2, 5)


def test_delete_removes_only_that_object():
    lab = np.zeros((8, 8), np.int32)
    lab[1:4, 1:4], lab[4:6, 4:6] = 1, 2
    edit = delete(lab, 1)
    out = _applied(lab, edit)
    assert not (out == 1).any() and (out[4:6, 4:6] == 2).all() and (out == 2).sum() == 4
    assert edit.object_id == 1 and (edit.values() == 0).all() and len(edit.indices()[0]) == 9


def test_split_by_two_seeds_parts_touching_disks_at_their_neck():
    lab = _two_disks()
    edit = split_by_seeds(lab, (20, 14), (20, 34))
    out = _applied(lab, edit)
    assert edit.object_id == 8  # the next free id
    assert set(np.unique(out)) == {0, 1, 7, 8}
    np.testing.assert_array_equal(out > 0, lab > 0)  # no pixel gained or lost
    assert (out[lab == 7] == 7).all()
    left, right = out == 1, out == 8
    assert left[:, 26:].sum() == 0 and right[:, :23].sum() == 0  # parted at the neck (x ~ 24)
    assert abs(int(left.sum()) - int(right.sum())) < 12
    from scipy import ndimage as ndi

    assert ndi.label(left)[1] == 1 and ndi.label(right)[1] == 1
    with pytest.raises(ValueError, match="same object"):
        split_by_seeds(lab, (20, 14), (1, 1))
    with pytest.raises(ValueError, match="background"):
        split_by_seeds(lab, (39, 0), (20, 14))


def test_split_by_seeds_in_a_volume_and_with_an_image():
    vol = np.stack([_two_disks()] * 3)
    edit = split_by_seeds(vol, (1, 20, 14), (1, 20, 34), next_id=20)
    out = _applied(vol, edit)
    assert edit.z0 == 0 and edit.before.ndim == 3
    assert (out[:, 20, 10] == 1).all() and (out[:, 20, 30] == 20).all()
    np.testing.assert_array_equal(out[0], out[2])
    lab = _two_disks()
    smooth = np.where(lab == 1, 1.0, 0.0).astype(np.float32)
    smooth[:, 20] = 0.2  # a dark seam inside the object, left of the neck: the cut follows it
    out = _applied(lab, split_by_seeds(lab, (20, 14), (20, 34), smooth=smooth))
    np.testing.assert_array_equal(out > 0, lab > 0)
    assert out[20, 19] == 1 and out[20, 22] == 8 and not (out == 8)[:, :20].any()


def test_split_by_a_line_cuts_a_bar_into_its_pieces():
    lab = np.zeros((12, 30), np.int32)
    lab[2:10, 2:28] = 3
    lab[0, 0] = 5
    edit = split_by_line(lab, [(0, 12), (11, 12)])  # a vertical line from background to background
    out = _applied(lab, edit)
    assert set(np.unique(out)) == {0, 3, 5, 6}
    np.testing.assert_array_equal(out > 0, lab > 0)  # the line's pixels stay in the object
    assert (out[2:10, 13:28] == 3).all()  # the larger piece keeps the id
    assert (out[2:10, 2:12] == 6).all()
    assert set(np.unique(out[2:10, 12])) <= {3, 6}
    assert out[0, 0] == 5
    diag = split_by_line(lab, [(0, 5), (12, 17)])  # a diagonal line (8-connected) cuts too
    assert set(np.unique(_applied(lab, diag))) == {0, 3, 5, 6}
    with pytest.raises(ValueError, match="does not cut"):
        split_by_line(lab, [(0, 12), (5, 12)])  # stops inside the object
    with pytest.raises(ValueError, match="crosses no object"):
        split_by_line(lab, [(11, 0), (11, 29)])
    assert line_pixels((5, 5), [(0, 0), (4, 4)]).sum() == 5


def test_fill_holes_of_one_object_or_all_leaves_holes_with_other_objects():
    lab = np.zeros((20, 30), np.int32)
    lab[2:9, 2:9] = 1
    lab[4:7, 4:7] = 0  # a 3x3 hole
    lab[2:12, 12:22] = 2
    lab[5:8, 15:18] = 0  # a hole...
    lab[6, 16] = 3  # ...holding another object: left alone
    lab[14:19, 2:7] = 4
    lab[16, 4] = 0  # a one-pixel hole
    out = _applied(lab, fill_holes(lab, [1]))
    assert (out[2:9, 2:9] == 1).all() and (out[lab != 0] == lab[lab != 0]).all()
    assert out[16, 4] == 0
    out = _applied(lab, fill_holes(lab))
    assert (out[2:9, 2:9] == 1).all() and out[16, 4] == 4
    np.testing.assert_array_equal(out[5:8, 15:18], lab[5:8, 15:18])
    assert not fill_holes(out).changed
    vol = np.stack([np.zeros_like(lab), lab, np.zeros_like(lab)])  # a hole on a slice is no 3D hole
    assert not fill_holes(vol).changed
    out = _applied(vol, fill_holes(vol, planes=True))
    assert out[1, 5, 5] == 1 and out[1, 16, 4] == 4 and not out[0].any()


def test_remove_small_objects():
    lab = np.zeros((10, 10), np.int32)
    lab[0:2, 0:2], lab[5:9, 5:9], lab[0, 9] = 1, 2, 3
    out = _applied(lab, remove_small(lab, 5))
    expect = lab.copy()
    expect[(lab == 1) | (lab == 3)] = 0
    np.testing.assert_array_equal(out, expect)
    assert not remove_small(lab, 1).changed
    vol = np.stack([lab, lab])  # voxels in a volume: object 1 has 8
    out = _applied(vol, remove_small(vol, 5))
    assert (out == 1).sum() == 8 and not (out == 3).any()
