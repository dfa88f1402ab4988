"""ISBI 2012 membrane segmentation through the CLI's own functions: train on slices 0-19, evaluate on 20-29.

Prints one table: an Otsu-threshold baseline (no learning) and the UNet trained from random
weights under a CPU time budget, with mean IoU (membrane/interior), Dice, pixel accuracy and times.

    .venv/bin/python bench/isbi.py [--seconds 600] [--data ../shared/data/isbi2012] [--device auto]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from napari_segsuite.io import read_image
from napari_segsuite.progress import drive
from napari_segsuite.tasks import semantic
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import evaluate, model_for_training

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=600)
p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/isbi2012"))
p.add_argument("--device", default="auto")
p.add_argument("--model", default="unet")
p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA (default: mixed precision)")
args = p.parse_args()

root = Path(args.data)
img = [read_image(root / "image" / f"{i}.png") for i in range(30)]
lab = [read_image(root / "label" / f"{i}.png") for i in range(30)]
tr_i, tr_l, te_i, te_l = img[:20], lab[:20], img[20:], lab[20:]

rows = []
t0 = time.monotonic()
cm = np.zeros((2, 2), np.int64)
for im, lb in zip(te_i, te_l):  # membranes are dark: below Otsu's threshold -> class 0 (value 0)
    cm += semantic.confusion((im > threshold_otsu(im)).astype(int), (lb > 0).astype(int), 2)
rows.append(("otsu threshold", 0.0, time.monotonic() - t0, semantic.metrics_from_confusion(cm)))

model = model_for_training(args.model, tr_i, tr_l)
t0 = time.monotonic()
res = drive(train(model, tr_i, tr_l, TrainConfig(time_budget=args.seconds, device=args.device, amp=not args.no_amp)))
t_train = time.monotonic() - t0
t0 = time.monotonic()
m = drive(evaluate(res.model, te_i, te_l, device=args.device))
rows.append(
    (f"{args.model} ({res.model.card.training['steps']} steps, {res.stopped})", t_train, time.monotonic() - t0, m)
)

print(
    "| method | train s | eval s (10 slices) | mean IoU | IoU membrane | IoU interior | Dice (interior) | pixel acc |"
)
print("|---|---|---|---|---|---|---|---|")
for name, tt, te, mm in rows:
    iou = mm["iou_per_class"]
    print(
        f"| {name} | {tt:.0f} | {te:.1f} | {mm['mean_iou']:.3f} | {iou[0]:.3f} | {iou[1]:.3f} | {mm['dice']:.3f} | {mm['pixel_accuracy']:.3f} |"
    )
