"""The coarser grid of native 3D models whose classes are told apart by place (grid.py): chosen from
the data, kept in the card, and undone at prediction."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.blockwise import segment_blocks
from napari_segsuite.grid import choose_downsample, downsample_volume, look_alike_share, told_apart_by_place
from napari_segsuite.inference import predict_maps, segment
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.progress import drive
from napari_segsuite.training import TrainConfig, train


def _regions(shape=(48, 64, 64), distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A volume of four regions (the quarters in Y/X of a centred block, the rest 0): of one texture
    (told apart by place, as atlas regions) or of four different brightnesses."""
    rng = np.random.default_rng(0)
    lab = np.zeros(shape, np.uint8)
    z, y, x = (n // 2 for n in shape)
    block = lab[z // 2 : z + z // 2, y // 2 : y + y // 2, x // 2 : x + x // 2]
    h, w = block.shape[1] // 2, block.shape[2] // 2
    block[:, :h, :w], block[:, :h, w:], block[:, h:, :w], block[:, h:, w:] = 1, 2, 3, 4
    img = rng.normal(0, 0.1, shape).astype(np.float32) + (lab > 0)
    if distinct:
        img += lab.astype(np.float32)
    return img, lab


def _card(**kw):
    return new_model("unet3d", label_values=[0, 1, 2, 3, 4], depth=2, base_filters=4, **kw).card


def test_classes_told_apart_by_place_get_a_coarser_grid():
    img, lab = _regions()
    assert look_alike_share([img], [lab]) >= 0.8  # the four regions look alike; the rest does not
    assert look_alike_share(*map(list, zip(_regions(distinct=True)))) == 0.0
    shapes = [lab.shape]

    def place():
        return told_apart_by_place([img], [lab])

    assert choose_downsample(_card(), shapes, (16, 16, 16), 1.0, place) == 2
    assert choose_downsample(_card(), shapes, (48, 64, 64), 1.0, place) == 1  # the crop sees it all
    assert choose_downsample(_card(), shapes, (16, 16, 16), 3.0, place) == 1  # thick slices
    d_img, d_lab = _regions(distinct=True)
    assert choose_downsample(_card(), shapes, (16, 16, 16), 1.0, lambda: told_apart_by_place([d_img], [d_lab])) == 1


def test_downsampling_averages_intensities_and_keeps_label_values():
    x = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    small = downsample_volume(x, 2)
    assert small.shape == (2, 3, 3) and small[0, 0, 0] == pytest.approx(x[:2, :2, :2].mean())
    lab = np.repeat(np.arange(4, dtype=np.uint16)[:, None, None] * 1000, 36, 0).reshape(4, 6, 6)
    assert set(np.unique(downsample_volume(lab, 2, labels=True))) <= {0, 1000, 2000, 3000}
    rgb = np.zeros((4, 6, 6, 3), np.float32)
    assert downsample_volume(rgb, 2, channels_last=True).shape == (2, 3, 3, 3)


def test_coarse_grid_model_trains_predicts_at_full_size_and_keeps_its_grid(tmp_path):
    img, lab = _regions((32, 64, 64))
    model = new_model("unet3d", label_values=[0, 1, 2, 3, 4], depth=2, base_filters=4)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=16, patch_size_z=16, calibrate=False)
    res = drive(train(model, [img], [lab], cfg))
    card = res.model.card
    assert card.downsample == 2 and card.training is not None and card.training["patch"] == [16, 16, 16]
    x = img[None].astype(np.float32)
    maps = drive(predict_maps(res.model, x, tile=(16, 32, 32)))
    assert maps.shape == (5, 32, 64, 64)
    card.downsample = 1
    coarse = drive(predict_maps(res.model, x[:, ::2, ::2, ::2], tile=(16, 32, 32)))
    assert coarse.shape == (5, 16, 32, 32)
    card.downsample = 2
    save_model(res.model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.card.downsample == 2
    seg = drive(segment(again, img))
    assert seg.labels.shape == img.shape
    with pytest.raises(ValueError, match="coarser grid"):  # blocks would each be averaged down on their own
        drive(segment_blocks(again, img, {}))
    # fine-tuning keeps the grid: the new volumes are averaged down the same way
    tuned = drive(train(again, [img], [lab], TrainConfig(epochs=1, steps_per_epoch=1, calibrate=False)))
    assert tuned.model.card.downsample == 2 and tuned.model.card.training["patch"][1] <= 32
    with pytest.raises(ValueError, match="native 3D"):
        flat = new_model("unet", label_values=[0, 1, 2, 3, 4], depth=2, base_filters=4)
        drive(train(flat, [img[0]], [lab[16]], TrainConfig(epochs=1, downsample=2)))
