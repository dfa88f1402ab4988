"""The training plan for volumes: voxel size -> pooling, crop shape and size; object rings in thick slices."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.plan import VOXELS_PER_STEP, anisotropic_levels, plan
from napari_segsuite.samples import prepare_samples
from napari_segsuite.tasks import instance
from napari_segsuite.training import TrainConfig
from napari_segsuite.workflows import model_for_training


@pytest.mark.parametrize(
    ("voxel", "depth", "levels"),
    [
        (None, 4, 0),
        ((1, 1, 1), 4, 0),
        ((2, 1, 1), 4, 0),
        ((3, 1, 1), 4, 1),
        ((5, 1, 1), 4, 2),
        ((50, 4, 4), 4, 3),
        ((100, 1, 1), 3, 3),
    ],
)
def test_anisotropic_levels(voxel, depth, levels):
    assert anisotropic_levels(voxel, depth) == levels


def _plan(arch, shape, voxel, **cfg):
    vol = sd.nuclei_3d(seed=0, shape=shape)
    model = model_for_training(arch, [vol["image"]], [vol["instances"]], voxel_size=voxel)
    config = TrainConfig(voxel_size=voxel, **cfg)
    samples = prepare_samples(model, [vol["image"]], [vol["instances"]])
    return model, plan(model, samples, config)


def test_thick_slices_give_thin_crops_within_the_step_budget():
    model, iso = _plan("unet3d-instance", (40, 160, 160), (1.0, 1.0, 1.0))
    _, thick = _plan("unet3d-instance", (40, 160, 160), (4.0, 1.0, 1.0))
    assert model.card.build.get("xy_only_levels", 0) == 0
    for tp in (iso, thick):
        assert tp.batch_size >= 2 and tp.batch_size * int(np.prod(tp.patch)) <= VOXELS_PER_STEP["cpu"]
    z_iso, z_thick = iso.patch[0] / iso.patch[1], thick.patch[0] / thick.patch[1]
    assert z_thick < z_iso / 2, (iso, thick)  # about the same physical extent in Z and Y/X


def test_new_3d_model_pools_thick_slices_in_plane_and_card_keeps_voxel_size():
    model, tp = _plan("unet3d", (16, 96, 96), (5.0, 1.0, 1.0))
    assert model.card.build["xy_only_levels"] == 2 and model.card.voxel_size == [5.0, 1.0, 1.0]
    assert tp.patch[0] <= 16 and tp.patch[1] <= 96  # never beyond the volume (rounded to the pooling)


def test_user_crop_is_kept():
    _, tp = _plan("unet3d-instance", (24, 96, 96), (2.0, 1.0, 1.0), patch_size=32, patch_size_z=8)
    assert tp.patch == (8, 32, 32)


def test_thick_slice_rings_leave_thin_nuclei_an_interior():
    inst = np.zeros((5, 24, 24), np.int32)
    inst[1:4, 4:20, 4:20] = 1  # a nucleus 3 slices thick, 16 px wide
    iso = instance.targets(inst)
    thick = instance.targets(inst, spacing=(4.0, 1.0, 1.0))
    assert (iso == instance.INTERIOR).sum() == 0  # a 2-voxel ring in Z too leaves nothing inside
    assert (thick[2] == instance.INTERIOR).sum() == 12 * 12  # in thick slices the ring is 2 px wide in Y/X only
    assert (thick[1][inst[1] > 0] == instance.BOUNDARY).all()  # and one slice in Z


def test_watershed_measures_thick_slices_as_thick():
    """A flat nucleus five thick slices high is one object, not split at its widest slice."""
    probs = np.zeros((3, 5, 24, 24), np.float32)
    probs[0] = 1
    probs[:, :, 6:18, 6:18] = np.array([0, 1, 0], np.float32)[:, None, None, None]
    out = instance.postprocess(probs, spacing=(4.0, 1.0, 1.0))
    assert out.max() == 1
