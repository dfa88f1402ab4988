"""Position channels (position.py): models whose classes are told apart by place read where each pixel
lies, through training, saving and prediction."""

import numpy as np
import pytest
import torch

from napari_segsuite import augment
from napari_segsuite.augment import crop_batch
from napari_segsuite.blockwise import segment_blocks
from napari_segsuite.evaluation import evaluate
from napari_segsuite.export import check_exportable
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.position import FREQUENCIES, input_channels, position_channels, with_position
from napari_segsuite.progress import drive
from napari_segsuite.samples import Sample
from napari_segsuite.tasks import Targets
from napari_segsuite.training import TrainConfig, train


def test_position_channels_run_edge_to_edge_and_fold_along_mirrored_axes():
    p = position_channels((4, 6), mirror_axes=[1])
    assert p.shape == (2, 4, 6) and p.dtype == np.float32
    np.testing.assert_allclose(p[0, :, 0], [-0.75, -0.25, 0.25, 0.75])  # pixel centres, -1 .. 1
    assert np.all(p[0] == p[0][:, :1])  # constant along the other axis
    np.testing.assert_allclose(p[1, 0], np.abs(np.linspace(-5 / 6, 5 / 6, 6)), atol=1e-6)
    np.testing.assert_array_equal(p[1], p[1][:, ::-1])  # a mirroring leaves the folded axis true
    q = position_channels((4, 6), [1], frequencies=[1, 2])  # per axis: place, sin and cos at 1, then at 2
    assert q.shape == (10, 4, 6)
    np.testing.assert_allclose(
        q[:5, :, 0], [p[0, :, 0], *(f(np.pi * k * p[0, :, 0]) for k in (1, 2) for f in (np.sin, np.cos))], atol=1e-6
    )
    np.testing.assert_array_equal(q[5:], q[5:, :, ::-1])


def test_crops_keep_each_pixels_place_through_augmentation(monkeypatch):
    """Gain, offset, gamma and noise change the image channel only; the place channels of every crop
    are those of its window in the whole image (mirrored along the folded axis at most)."""
    monkeypatch.setattr(augment, "ELASTIC_P", 0.0)  # it warps image and places alike, filling in zeros
    rng = np.random.default_rng(0)
    img = rng.random((1, 40, 40)).astype(np.float32)
    x = np.concatenate([img, position_channels((40, 40), [1])])
    sample = Sample(x, Targets(np.zeros((40, 40), np.int64), np.zeros((40, 40), np.int64), None))
    xb, _ = crop_batch([sample], (16, 16), 8, rng, augment=True, mirror_axes=(1,), places=2)
    assert xb.shape == (8, 3, 16, 16)
    step = 2 / 40
    for crop in xb.numpy():
        # scale augmentation resizes windows: the steps stay even and of one sign in Y, untouched in size
        dy = np.diff(crop[1], axis=0)
        assert np.allclose(dy, dy[0, 0], atol=1e-5) and 0.5 * step < dy[0, 0] < 1.5 * step
        assert crop[1].min() >= -1 and crop[1].max() <= 1 and crop[2].min() >= 0 and crop[2].max() <= 1
    assert not torch.allclose(xb[:, 0].std(dim=(1, 2)), torch.from_numpy(img).std())  # the image was augmented


def _bands(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A texture alone: three bands across Y of the same noise, told apart by place only."""
    img = np.random.default_rng(seed).random((96, 96)).astype(np.float32)
    lab = np.repeat(np.array([1, 2, 3], np.uint8), 32)[:, None].repeat(96, 1)
    return img, lab


def test_a_model_learns_classes_told_apart_by_place_only_when_it_reads_its_place():
    """Held out on another image: with its place the model finds the bands; without (the old
    behaviour: a 32-pixel crop inside a band looks like any other) it cannot."""
    (img, lab), (test_img, test_lab) = _bands(0), _bands(1)
    scores = {}
    for position in (True, False):
        torch.manual_seed(0)
        model = new_model("unet", label_values=[1, 2, 3], depth=2, base_filters=8)
        cfg = TrainConfig(
            epochs=6, steps_per_epoch=20, patch_size=32, batch_size=4, mirror_axes=(1,), position=position, lr=3e-3
        )
        res = drive(train(model, [img], [lab], cfg))
        assert res.model.card.position is position
        scores[position] = drive(evaluate(res.model, [test_img], [test_lab]))["mean_iou"]
    assert scores[True] > 0.7 and scores[False] < 0.5, scores  # measured: 0.87 and 0.29


def test_training_chooses_position_from_the_data_and_the_saved_model_reads_it(tmp_path):
    img, lab = _bands(0)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=32, mirror_axes=(-1,), calibrate=False)
    model = new_model("unet", label_values=[1, 2, 3], depth=2, base_filters=4)
    notes = []
    res = drive(train(model, [img], [lab], cfg), lambda p: notes.append(p.note) if "setup" in p.metrics else None)
    assert notes == ["training mirrored along X only, reading where each voxel lies"]  # said to the user once
    card = res.model.card
    assert card.position and card.mirror_axes == [1] and card.position_frequencies == list(FREQUENCIES)
    n = 1 + 2 * (1 + 2 * len(FREQUENCIES))  # image + Y and X, each with a sine and a cosine per frequency
    assert input_channels(card) == n and next(res.model.module.parameters()).shape[1] == n  # the first convolution
    before = drive(evaluate(res.model, [img], [lab]))["mean_iou"]
    save_model(res.model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.card.position and drive(evaluate(loaded, [img], [lab]))["mean_iou"] == pytest.approx(before)
    assert with_position(np.zeros((1, 5, 5), np.float32), loaded.card).shape == (n, 5, 5)
    # fine-tuned, it keeps the axes its place is folded along, whatever mirror axes it is given
    again = TrainConfig(epochs=1, steps_per_epoch=1, patch_size=32, mirror_axes=(0,), calibrate=False)
    assert drive(train(load_model(tmp_path / "m"), [img], [lab], again)).model.card.mirror_axes == [1]
    with pytest.raises(ValueError, match="where each voxel lies"):
        check_exportable(loaded, "onnx")
    with pytest.raises(ValueError, match="block by block"):
        drive(segment_blocks(loaded, np.zeros((4, 32, 32), np.float32), {}))
    # any orientation (no mirror axes): no place, and asking for one is refused
    model = new_model("unet", label_values=[1, 2, 3], depth=2, base_filters=4)
    cfg.mirror_axes = None
    assert not drive(train(model, [img], [lab], cfg)).model.card.position
    cfg.position = True
    with pytest.raises(ValueError, match="fixed orientation"):
        drive(train(new_model("unet", label_values=[1, 2, 3], depth=2, base_filters=4), [img], [lab], cfg))
    # classes that look different do not read their place
    cfg.mirror_axes, cfg.position = (-1,), None
    bright = img + lab.astype(np.float32)
    model = new_model("unet", label_values=[1, 2, 3], depth=2, base_filters=4)
    assert not drive(train(model, [bright], [lab], cfg)).model.card.position


def test_pretraining_damages_the_image_and_leaves_the_places():
    from napari_segsuite.pretrain import pretext_loss

    seen = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x[:, :1]

    x = torch.from_numpy(np.concatenate([np.ones((1, 16, 16), np.float32), position_channels((16, 16), [1])]))[None]
    pretext_loss(spy, x, torch.Generator().manual_seed(0), places=2)
    assert torch.equal(seen[0][:, 1:], x[:, 1:]) and not torch.equal(seen[0][:, :1], x[:, :1])
