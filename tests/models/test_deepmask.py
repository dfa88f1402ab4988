import time

import numpy as np
import pytest
import torch

import napari_segsuite.models.deepmask  # noqa: F401  (registers "deepmask")
from napari_segsuite import sample_data as sd
from napari_segsuite.models.deepmask import DeepMask
from napari_segsuite.models.registry import build, get_spec
from napari_segsuite.preprocess import normalize
from napari_segsuite.tasks import instance


def _targets(ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([ids, (ids > 0).long()]).long()


@pytest.mark.parametrize("shape", [(64, 64), (96, 128)])
def test_contract(shape):
    torch.manual_seed(0)
    spec = get_spec("deepmask")
    assert spec.kind == "instance"
    model = build("deepmask")
    assert isinstance(model, DeepMask) and model.max_object_size >= 64
    x = torch.randn(2, 1, *shape)
    ids = torch.zeros(2, *shape, dtype=torch.long)
    ids[0, 10:30, 12:34] = 7
    ids[0, 36:50, 20:31] = 2
    ids[0, :, -4:] = -1  # unknown pixels
    y = torch.stack([_targets(i) for i in ids])
    y[:, 1][y[:, 0] < 0] = -1
    model.train()
    loss = model.loss(x, y)  # image 1 has no object at all
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.mask_head.parameters()) > 0
    empty = model.loss(x[1:], y[1:])  # no object: score loss only, still finite
    assert torch.isfinite(empty)

    model.eval()
    dets = model.detect(x, score_threshold=0.0)
    assert len(dets) == 2
    for d in dets:
        n = len(d["scores"])
        assert d["masks"].shape == (n, *shape) and d["masks"].dtype == torch.bool
        assert d["classes"].dtype == torch.int64 and (d["classes"] == 1).all()
        assert n <= model.max_detections and (d["scores"][:-1] >= d["scores"][1:]).all()
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
    none = model.detect(x, score_threshold=1.01)[0]  # nothing passes: empty, well-shaped
    assert none["masks"].shape == (0, *shape) and none["scores"].shape == (0,)

    mask, score = model.mask_at(x[:1], (20, 20))
    assert mask.shape == shape and mask.dtype == torch.bool and 0.0 <= score <= 1.0
    outside, s0 = model.mask_at(x[:1], (-5, 3))
    assert not outside.any() and s0 == 0.0


def test_class_head_when_more_classes():
    model = build("deepmask", num_classes=4)
    ids = torch.zeros(1, 64, 64, dtype=torch.long)
    ids[0, 10:30, 10:30] = 1
    y = torch.stack([ids, ids * 3], 1)
    loss = model.loss(torch.randn(1, 1, 64, 64), y)
    loss.backward()
    assert model.class_head.weight.grad.abs().sum() > 0
    d = model.eval().detect(torch.randn(1, 1, 64, 64), 0.0)[0]
    assert ((d["classes"] >= 1) & (d["classes"] <= 3)).all()


def _prep(seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    s = sd.nuclei_2d(seed=seed)
    x = torch.from_numpy(normalize(s["image"][None, None].astype(np.float32), None)[0])
    ids = torch.from_numpy(s["instances"].astype(np.int64))
    return x, _targets(ids), s["instances"]


def _batch(data, rng: np.random.Generator, n: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(n):
        x, y, _ = data[rng.integers(len(data))]
        i, j = (int(rng.integers(0, s - crop + 1)) for s in x.shape[-2:])
        xc, yc = x[:, i : i + crop, j : j + crop], y[:, i : i + crop, j : j + crop]
        k = int(rng.integers(4))
        xc, yc = torch.rot90(xc, k, (1, 2)), torch.rot90(yc, k, (1, 2))
        if rng.random() < 0.5:
            xc, yc = xc.flip(-1), yc.flip(-1)
        xs.append(xc)
        ys.append(yc)
    return torch.stack(xs), torch.stack(ys)


STEPS, BATCH, CROP, LR = 100, 8, 128, 2e-3


def test_deepmask_learns_nuclei():
    """From random weights, STEPS steps of BATCH random 128x128 crops of 6 generated images (110 s
    with 1 thread on a loaded 2-core machine), then AP50 on 3 unseen images and click-to-segment IoU.

    Measured (seed 0): AP50 0.82 over the 3 unseen images at score threshold 0.8 (0.74-0.83 on other
    unseen seeds); mask_at on the centroids of unseen nuclei: mean IoU 0.73. Thresholds 0.65 and 0.6
    leave a margin for platform differences, far above a model that learned nothing (AP50 ~0:
    measured on the untrained model at thresholds 0.8 and 0; click IoU 0.15).
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [_prep(i) for i in range(6)]
    model = build("deepmask")
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=STEPS, pct_start=0.15)
    t0 = time.perf_counter()
    model.train()
    for _ in range(STEPS):
        x, y = _batch(data, rng, BATCH, CROP)
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0

    model.eval()
    ious, n_pred, n_true, clicks = [], 0, 0, []
    for seed in (300, 301, 302):
        x, _, gt = _prep(seed)
        det = model.detect(x[None], score_threshold=0.8)[0]
        objs = instance.objects_from_masks(det["masks"].numpy(), det["scores"].numpy(), det["classes"].numpy())
        labels, _ = instance.paste(objs, gt.shape)
        m = instance.metrics(labels, gt)
        ious.append(instance.match(labels, gt))
        n_pred += m["n_pred"]
        n_true += m["n_true"]
        for oid in range(1, int(gt.max()) + 1, 3):  # every third nucleus, clicked at its centroid
            yy, xx = np.nonzero(gt == oid)
            cy, cx = float(yy.mean()), float(xx.mean())
            if len(yy) < 20 or gt[int(cy), int(cx)] != oid:
                continue
            mask, score = model.mask_at(x[None], (cy, cx))
            true = gt == oid
            clicks.append((mask.numpy() & true).sum() / (mask.numpy() | true).sum())
    ap50 = instance.metrics_from_matches(np.concatenate(ious), n_pred, n_true)["ap50"]
    click_iou = float(np.mean(clicks))
    print(f"deepmask: {train_s:.0f} s training, AP50 {ap50:.3f}, mask_at mean IoU {click_iou:.3f} ({len(clicks)})")
    assert ap50 >= 0.65, ap50
    assert len(clicks) >= 20 and click_iou >= 0.6, click_iou
