"""SOLO (SOLOv2 style): the ObjectModel contract, Matrix NMS, and learning nuclei from scratch."""

import time

import numpy as np
import pytest
import torch

import napari_segsuite.models.solo as solo
from napari_segsuite import sample_data as sd
from napari_segsuite.models.registry import build, get_spec
from napari_segsuite.preprocess import normalize
from napari_segsuite.tasks import instance


def _targets(ids: np.ndarray, class_map: np.ndarray | None = None) -> np.ndarray:
    """``(2, H, W)`` int64: ids and class (1 inside objects), -1 kept where ids are -1."""
    cls = (ids > 0).astype(np.int64) if class_map is None else class_map
    cls = np.where(ids < 0, -1, cls)
    return np.stack([ids, cls]).astype(np.int64)


def _toy_batch(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images: the first with three objects (one of class 2) and an unknown band, the second empty."""
    x = torch.randn(2, 1, h, w)
    ids = np.zeros((2, h, w), np.int64)
    ids[0, 5:25, 5:20] = 3
    ids[0, 30:40, 30:45] = 8
    ids[0, 40:60, 2:30] = 11  # a larger object
    ids[0, :, w - 8 :] = -1  # unannotated band
    cls = (ids > 0).astype(np.int64)
    cls[ids == 8] = 2
    y = np.stack([_targets(ids[0], cls[0]), _targets(ids[1])])
    return x, torch.from_numpy(y)


def test_registered_with_contract():
    spec = get_spec("solo")
    assert spec.kind == "instance" and spec.divisible_by == 32
    model = build("solo", num_classes=3, in_channels=2)
    assert isinstance(model, solo.SOLO) and isinstance(model, solo.ObjectModel)
    assert model.max_object_size >= 96


@pytest.mark.parametrize("shape", [(64, 64), (96, 128)])
def test_loss_and_detect_contract(shape):
    torch.manual_seed(0)
    model = solo.build_solo(num_classes=3)
    x, y = _toy_batch(*shape)
    loss = model.loss(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for part in ("backbone", "mask_branch", "kernel_out", "cate_out"):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part

    # an all-empty batch: category loss alone, still finite with gradients
    model.zero_grad()
    empty = torch.zeros_like(y)
    empty_loss = model.loss(x, empty)
    empty_loss.backward()
    assert torch.isfinite(empty_loss) and model.cate_out.bias.grad.abs().sum() > 0

    model.eval()
    dets = model.detect(x, score_threshold=0.0)  # untrained: every candidate comes back
    assert len(dets) == 2
    for d in dets:
        n = len(d["scores"])
        assert d["masks"].shape == (n, *shape) and d["masks"].dtype == torch.bool
        assert d["scores"].dtype == torch.float32 and d["classes"].dtype == torch.int64
        assert d["classes"].shape == (n,) and n <= model.max_detections
        if n:
            assert ((d["classes"] >= 1) & (d["classes"] <= 2)).all()
            assert (d["scores"][:-1] >= d["scores"][1:]).all() and (d["scores"] <= 1).all()
    none = model.detect(x, score_threshold=0.99)  # nothing passes: empty, well-typed detections
    assert none[0]["masks"].shape == (0, *shape) and none[0]["classes"].dtype == torch.int64


def test_loss_ignores_unknown_pixels():
    """Unknown pixels (-1) are left out: the Dice loss ignores predictions there, and the same band
    marked as known background changes the loss."""
    pred = torch.rand(2, 16, 16)
    target = (torch.rand(2, 16, 16) > 0.5).float()
    known = torch.ones(16, 16)
    known[:, 10:] = 0
    other = pred.clone()
    other[:, :, 10:] = torch.rand(2, 16, 6)
    assert torch.allclose(solo._dice_loss(pred, target, known), solo._dice_loss(other, target, known))
    torch.manual_seed(0)
    model = solo.build_solo().train()
    x, y = _toy_batch(64, 64)
    background = y.clone()
    background[:, :, :, -8:] = 0
    assert not torch.allclose(model.loss(x, y), model.loss(x, background))


def test_grid_targets_assign_every_object_its_class():
    _, y = _toy_batch(64, 64)
    t = solo._image_targets(y[0, 0], y[0, 1], num_classes=3)
    assert sorted(set(t.pos_obj.tolist())) == [0, 1, 2]  # ids 3, 8, 11 each own at least one cell
    assert {int(c) for grid in t.cate for c in grid.unique()} == {0, 1, 2}
    assert not t.valid[0][:, -1].any() and t.valid[0][:, 0].all()  # cells centred on unknown pixels
    empty = solo._image_targets(y[1, 0], y[1, 1], num_classes=3)
    assert empty.pos_cell.numel() == 0 and all((g == 0).all() for g in empty.cate)


def test_matrix_nms_decays_duplicates_only():
    masks = torch.zeros(4, 100)
    masks[0, :40] = 1
    masks[1, :38] = 1  # near duplicate of 0
    masks[2, 60:90] = 1  # a separate object
    masks[3, :40] = 1  # same pixels as 0 but another class
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 0, 1])
    for kernel in ("gaussian", "linear"):
        out = solo.matrix_nms(masks, classes, scores, kernel=kernel)
        assert out[0] == 0.9 and out[2] == pytest.approx(0.7) and out[3] == pytest.approx(0.6)
        assert out[1] < 0.3
    with pytest.raises(ValueError):
        solo.matrix_nms(masks, classes, scores, kernel="nope")


def _prep(d: dict) -> tuple[np.ndarray, np.ndarray]:
    return normalize(d["image"][None, None].astype(np.float32), None)[0], d["instances"].astype(np.int64)


def test_solo_learns_nuclei():
    """From random weights on 6 generated nuclei images, 150 steps of 4 random 128 px crops
    (about 30 s of CPU time; 60-75 s wall with 1 thread on a busy 2-core machine), then AP50 on 3
    unseen 256 px images.

    Measured: AP50 0.81-0.85 on the unseen images at this budget over three seeds (0.98 after 300
    steps). Empty or random detections score ~0, and a model with broken mask kernels stays far
    below (without the kernels' relative position terms, 300 steps gave 0.19); the threshold 0.6
    leaves a margin for seed- and thread-dependent numerics.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = [_prep(sd.nuclei_2d(seed=i)) for i in range(6)]
    unseen = [_prep(sd.nuclei_2d(seed=300 + i)) for i in range(3)]
    model = solo.build_solo()
    steps, crop, batch = 150, 128, 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            img, ids = train[rng.integers(len(train))]
            r, c = rng.integers(0, ids.shape[0] - crop + 1, 2)
            k = int(rng.integers(4))
            xs.append(np.rot90(img[:, r : r + crop, c : c + crop], k, (1, 2)).copy())
            ys.append(_targets(np.rot90(ids[r : r + crop, c : c + crop], k).copy()))
        loss = model.loss(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0

    model.eval()
    ious, n_pred, n_true = [], 0, 0
    for img, ids in unseen:
        det = model.detect(torch.from_numpy(img[None]), score_threshold=0.3)[0]
        objs = instance.objects_from_masks(det["masks"].numpy(), det["scores"].numpy(), det["classes"].numpy())
        labels, features = instance.paste(objs, ids.shape)
        assert set(features["class"].tolist()) <= {1}
        ious.append(instance.match(labels, ids))
        n_pred += int(labels.max())
        n_true += int(ids.max())
    m = instance.metrics_from_matches(np.concatenate(ious), n_pred, n_true)
    assert m["ap50"] >= 0.6, (m, f"{train_s:.0f} s training")
