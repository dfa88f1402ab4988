"""Images of a fixed orientation (brain MRI): crops mirrored along the allowed axes only, never rotated,
and test-time augmentation the same."""

import numpy as np
import pytest

from napari_segsuite import augment
from napari_segsuite.augment import crop_batch
from napari_segsuite.card import ModelCard
from napari_segsuite.inference import MIRRORS, mirrors, transposes
from napari_segsuite.io import fixed_orientation
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.progress import drive
from napari_segsuite.samples import Sample
from napari_segsuite.tasks import Targets
from napari_segsuite.training import TrainConfig, train


def _coded(shape: tuple[int, ...]) -> list[Sample]:
    """One sample whose targets code each pixel's place: ``sum(index * 10**k)`` over the axes."""
    grids = np.indices(shape)
    y = sum(g * 10 ** (len(shape) - 1 - k) for k, g in enumerate(grids)).astype(np.int64)
    return [Sample(np.zeros((1, *shape), np.float32), Targets(y, y, None))]


def _mirrored_axes(shape: tuple[int, ...], mirror_axes: tuple[int, ...] | None) -> set[str]:
    """What 60 whole-image crops did to the axes: ``"flip k"`` for a reversed axis, ``"rotated"``."""
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(15):
        _, y = crop_batch(_coded(shape), shape, 4, rng, augment=True, mirror_axes=mirror_axes)
        for t in y.numpy():
            for k in range(len(shape)):
                step = np.diff(t, axis=k)
                if np.any(np.abs(step) != 10 ** (len(shape) - 1 - k)):  # another axis's code runs along it
                    seen.add("rotated")
                elif np.all(step < 0):
                    seen.add(f"flip {k}")
    return seen


@pytest.mark.parametrize("shape", [(4, 6, 6), (6, 6)])
def test_fixed_orientation_mirrors_only_the_given_axes(shape, monkeypatch):
    monkeypatch.setattr(augment, "ELASTIC_P", 0.0)  # its warping would read as a rotation here
    nd = len(shape)
    assert _mirrored_axes(shape, None) == {f"flip {k}" for k in range(nd)} | {"rotated"}
    assert _mirrored_axes(shape, (nd - 1,)) == {f"flip {nd - 1}"}
    assert _mirrored_axes(shape, ()) == set()


def _card(dims: int, mirror_axes: list[int] | None) -> ModelCard:
    return ModelCard(
        name="m", architecture="unet", kind="semantic", num_classes=2, label_values=[0, 1],
        class_names=["a", "b"], spatial_dims=dims, mirror_axes=mirror_axes,
    )  # fmt: skip


def test_test_time_augmentation_follows_the_orientation():
    assert mirrors(_card(3, None)) == MIRRORS and mirrors(_card(2, None)) == MIRRORS
    assert transposes(_card(2, None))
    assert mirrors(_card(3, [2])) == ((), (-1,))  # left-right only
    assert mirrors(_card(2, [1])) == ((), (-1,)) and not transposes(_card(2, [1]))
    assert mirrors(_card(3, [])) == ((),)


def test_nifti_sources_fix_the_orientation():
    assert fixed_orientation(["a.nii.gz", "b.NII"]) == (-1,)
    assert fixed_orientation(["a.nii.gz", "b.tif"]) is None and fixed_orientation([None]) is None
    assert fixed_orientation([]) is None


def test_training_keeps_the_orientation_where_classes_are_told_apart_by_place(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((32, 32)).astype(np.float32)
    quarters = np.zeros((32, 32), np.uint8)  # four regions of one texture: told apart by place alone
    quarters[:16, 16:], quarters[16:, :16], quarters[16:, 16:] = 1, 2, 3
    model = new_model("unet", label_values=[0, 1, 2, 3], depth=2, base_filters=4)
    with pytest.raises(ValueError, match="mirror axes"):
        drive(train(model, [img], [quarters], TrainConfig(epochs=1, mirror_axes=(2,))))
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=16, mirror_axes=(-1,), calibrate=False)
    res = drive(train(model, [img], [quarters], cfg))
    assert res.model.card.mirror_axes == [1]
    save_model(res.model, tmp_path / "m")
    assert load_model(tmp_path / "m").card.mirror_axes == [1]
    # classes that look different train with every mirroring and rotation, whatever the file says
    bright = img + quarters.astype(np.float32)
    model = new_model("unet", label_values=[0, 1, 2, 3], depth=2, base_filters=4)
    assert drive(train(model, [bright], [quarters], cfg)).model.card.mirror_axes is None
