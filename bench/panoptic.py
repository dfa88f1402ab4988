"""Panoptic segmentation on generated scenes: PQ, SQ, RQ (overall, things, stuff) and times.

Trains ``panoptic-deeplab`` from random weights on generated scenes (2 stuff classes: background and
tissue; 2 thing classes: round cells and rods) under a wall-clock budget, then scores unseen scenes.
A semantic UNet + connected components of the thing classes is the baseline: it is what a user
without a panoptic model would do, and it cannot split touching objects.

    .venv/bin/python bench/panoptic.py [--seconds 180] [--device auto]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy import ndimage as ndi

from napari_segsuite import sample_data as sd
from napari_segsuite.inference import segment
from napari_segsuite.progress import drive
from napari_segsuite.tasks import panoptic
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import evaluate, model_for_training

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=180)
p.add_argument("--device", default="auto")
p.add_argument("--train", type=int, default=8, help="training scenes (256x256)")
p.add_argument("--test", type=int, default=5, help="unseen scenes")
args = p.parse_args()

tr = [sd.panoptic_scene(seed=i, shape=(256, 256)) for i in range(args.train)]
te = [sd.panoptic_scene(seed=1000 + i, shape=(256, 256)) for i in range(args.test)]
things = list(tr[0]["thing_classes"])
rows = []


def fit(arch: str):
    images, sem = [s["image"] for s in tr], [s["semantic"] for s in tr]
    if arch == "panoptic-deeplab":
        model = model_for_training(arch, images, sem, instances=[s["instances"] for s in tr], things=things)
        kwargs = {"instances": [s["instances"] for s in tr]}
    else:
        model = model_for_training(arch, images, sem)
        kwargs = {}
    t0 = time.monotonic()
    res = drive(train(model, images, sem, TrainConfig(time_budget=args.seconds, device=args.device), **kwargs))
    return res, time.monotonic() - t0


# panoptic-deeplab
res, t_train = fit("panoptic-deeplab")
t0 = time.monotonic()
m = drive(
    evaluate(
        res.model,
        [s["image"] for s in te],
        [s["semantic"] for s in te],
        instances=[s["instances"] for s in te],
        device=args.device,
    )
)
t_eval = (time.monotonic() - t0) / len(te)
rows.append((f"panoptic-deeplab ({res.model.card.training['steps']} steps)", t_train, t_eval, m))

# baseline: semantic UNet, objects = connected components of each thing class
res, t_train = fit("unet")
t0 = time.monotonic()
counts = None
for s in te:
    sem = drive(segment(res.model, s["image"], device=args.device)).semantic.astype(np.int64)
    inst = np.zeros(sem.shape, np.int32)
    for c in things:
        lab, n = ndi.label(sem == c)
        inst[lab > 0] = lab[lab > 0] + inst.max()
    c = panoptic.pq_counts(sem, inst, s["semantic"].astype(np.int64), s["instances"], things, 4)
    counts = c if counts is None else counts + c
t_eval = (time.monotonic() - t0) / len(te)
rows.append(
    (
        f"unet + connected components ({res.model.card.training['steps']} steps)",
        t_train,
        t_eval,
        panoptic.pq_from_counts(counts, things),
    )
)

names = tr[0]["class_names"]
print(
    f"Generated scenes 256x256: {args.train} train, {args.test} unseen; budget {args.seconds:.0f} s per model; "
    f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
)
print(
    "| model | train s | s per image | PQ | SQ | RQ | PQ things | PQ stuff | "
    + " | ".join(f"PQ {n}" for n in names)
    + " |"
)
print("|---|---|---|---|---|---|---|---|" + "---|" * len(names))
for name, tt, te_s, mm in rows:
    per = mm["pq_per_class"]
    per_txt = " | ".join(f"{per.get(c, float('nan')):.3f}" for c in range(len(names)))
    print(
        f"| {name} | {tt:.0f} | {te_s:.2f} | {mm['pq']:.3f} | {mm['sq']:.3f} | {mm['rq']:.3f} | "
        f"{mm['pq_things']:.3f} | {mm['pq_stuff']:.3f} | {per_txt} |"
    )
