"""The fine-tuning learning curve on ISBI 2012: how many annotated slices does a user need?

Trains UNet on the first 1, 3, 10 and 20 training slices (0-19) under the same wall-clock budget, from
random weights ("scratch") and fine-tuned from a model pretrained on generated EM-like images
(Voronoi cells with dark membranes, made here, nothing downloaded), and reports membrane / interior
IoU on slices 20-29. The pretraining time is reported apart (it is paid once, not per user).

    .venv/bin/python bench/finetune.py [--seconds 90] [--pretrain 120] [--sizes 1,3,10,20] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_segsuite.io import read_image, save_model
from napari_segsuite.progress import drive
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import evaluate, model_for_training

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=90, help="training budget per run")
p.add_argument("--pretrain", type=float, default=120, help="budget of the pretraining on generated images")
p.add_argument("--sizes", default="1,3,10,20")
p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/isbi2012"))
p.add_argument("--device", default="auto")
args = p.parse_args()


def em_like(seed: int, shape=(512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A generated EM-like slice: Voronoi cells (random sizes), dark membranes 2-4 px wide, textured
    interiors with dark organelle blobs, blur and noise. Labels: 0 membrane, 255 interior (as ISBI)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(80, 200))
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)  # wavy membranes: a smooth random warp
    warp = [ndi.gaussian_filter(rng.standard_normal(shape), 24) * 24 / 0.05 * 0.05 for _ in range(2)]
    warp = [w / (np.abs(w).max() + 1e-8) * 10 for w in warp]
    cells = ndi.map_coordinates(cells, [yy + warp[0], xx + warp[1]], order=0, mode="reflect")
    membrane = ndi.binary_dilation(find_boundaries(cells, mode="thick"), iterations=int(rng.integers(1, 3)))
    img = 0.62 + 0.05 * rng.standard_normal(n + 1)[cells]
    blobs = ndi.gaussian_filter(rng.random(shape), 1.5)
    img = img - 0.35 * (blobs > np.quantile(blobs, 0.93)) - 0.45 * membrane
    img = ndi.gaussian_filter(img, 1.2) + 0.07 * rng.standard_normal(shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), np.where(membrane, 0, 255).astype(np.uint8)


root = Path(args.data)
img = [read_image(root / "image" / f"{i}.png") for i in range(30)]
lab = [read_image(root / "label" / f"{i}.png") for i in range(30)]
te_i, te_l = img[20:], lab[20:]

gen = [em_like(s) for s in range(12)]
t0 = time.monotonic()
base = model_for_training("unet", [g[0] for g in gen], [g[1] for g in gen])
pre = drive(
    train(base, [g[0] for g in gen], [g[1] for g in gen], TrainConfig(time_budget=args.pretrain, device=args.device))
)
t_pre = time.monotonic() - t0
tmp = Path(tempfile.mkdtemp())
save_model(pre.model, tmp / "em-pretrained")
m0 = drive(evaluate(pre.model, te_i, te_l, device=args.device))

rows = [("pretrained on generated only (0 ISBI slices)", 0, t_pre, pre.model.card.training["steps"], m0)]
for n in [int(v) for v in args.sizes.split(",")]:
    for start in ("scratch", "fine-tune"):
        spec = "unet" if start == "scratch" else str(tmp / "em-pretrained")
        model = model_for_training(spec, img[:n], lab[:n])
        t0 = time.monotonic()
        res = drive(train(model, img[:n], lab[:n], TrainConfig(time_budget=args.seconds, device=args.device)))
        tt = time.monotonic() - t0
        m = drive(evaluate(res.model, te_i, te_l, device=args.device))
        rows.append((start, n, tt, res.model.card.training["steps"], m))
        print(f"  {start:>9} on {n:>2} slices: mean IoU {m['mean_iou']:.3f} ({tt:.0f} s)", flush=True)

print(
    f"\nISBI 2012, evaluated on slices 20-29; budget {args.seconds:.0f} s per run; pretraining {t_pre:.0f} s on 12 "
    "generated EM-like images"
)
print("| start | ISBI slices | train s | steps | mean IoU | IoU membrane | IoU interior | Dice (interior) |")
print("|---|---|---|---|---|---|---|---|")
for start, n, tt, steps, m in rows:
    iou = m["iou_per_class"]
    print(
        f"| {start} | {n} | {tt:.0f} | {steps} | {m['mean_iou']:.3f} | {iou[0]:.3f} | {iou[1]:.3f} | {m['dice']:.3f} |"
    )
