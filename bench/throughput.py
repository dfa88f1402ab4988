"""Optimiser steps in the same wall-clock time: `segsuite train` against a bare PyTorch loop.

Both loops train the same registry module from the same random initialisation, on the same crops
(the crop and batch the product picks for the data) from the ISBI 2012 slices 0-19 (a 20-slice stack
for the 3D model), for the same number of seconds. The bare loop: random crops, flips, Adam,
cross-entropy, float32 in PyTorch's default layout, nothing else. The product: `training.train` exactly
as `segsuite train` runs it (augmentation, validation, checkpoints, schedule; channels-last and
bfloat16 where :mod:`napari_segsuite.layout` chooses them). Printed: steps, steps/s and the ratio.

    .venv/bin/python bench/throughput.py --seconds 60
    .venv/bin/python bench/throughput.py --seconds 120 --models unet,unet-instance,unet3d --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi

from napari_segsuite.heap import reuse_freed_memory
from napari_segsuite.progress import drive
from napari_segsuite.samples import pad_to, prepare_samples
from napari_segsuite.tasks import IGNORE
from napari_segsuite.training import TrainConfig, plan, train
from napari_segsuite.workflows import model_for_training

ISBI = Path(
    os.environ.get("SEGSUITE_ISBI", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isbi2012")
)


def load(model: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    imgs = [np.asarray(Image.open(ISBI / "image" / f"{i}.png")) for i in range(20)]
    labs = [np.asarray(Image.open(ISBI / "label" / f"{i}.png")) for i in range(20)]
    if model.endswith("instance"):  # cells: connected components of the membrane-free interior
        labs = [ndi.label(lab > 0)[0].astype(np.int32) for lab in labs]
    if model.startswith("unet3d"):
        return [np.stack(imgs)], [np.stack(labs)]
    return imgs, labs


def bare_loop(
    model_name: str, images: list[np.ndarray], labels: list[np.ndarray], seconds: float, device: str = "cpu"
) -> int:
    """Steps a plain loop makes in ``seconds``: crops of the product's size, flips, Adam, cross-entropy."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = model_for_training(model_name, images, labels)
    cfg = TrainConfig()
    samples = prepare_samples(model, images, labels)
    dev = torch.device(device)
    p = plan(model, samples, cfg, dev.type)
    samples = [pad_to(s, p.patch) for s in samples]  # as the product pads a volume thinner than the crop
    xs = [s.x for s in samples]
    ys = [s.y if s.y.ndim == len(p.patch) else s.y[0] for s in samples]  # classes: the bare loop is cross-entropy
    # plain PyTorch: float32 in the default (NCHW) layout, where the product may run channels-last and bfloat16
    module = model.module.to(dev, memory_format=torch.contiguous_format).train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        bx, by = [], []
        for _ in range(p.batch_size):
            i = int(rng.integers(len(xs)))
            spatial = xs[i].shape[1:]
            st = [int(rng.integers(0, n - c + 1)) for n, c in zip(spatial, p.patch)]
            win = tuple(slice(a, a + c) for a, c in zip(st, p.patch))
            x, y = torch.from_numpy(xs[i][(slice(None), *win)].copy()), torch.from_numpy(ys[i][win].copy())
            for ax in range(1, len(p.patch) + 1):
                if rng.random() < 0.5:
                    x, y = x.flip(-ax), y.flip(-ax)
            bx.append(x)
            by.append(y)
        out = module(torch.stack(bx).to(dev, non_blocking=True))
        loss = F.cross_entropy(out, torch.stack(by).to(dev, non_blocking=True), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps


def product(
    model_name: str, images: list[np.ndarray], labels: list[np.ndarray], seconds: float, device: str = "cpu"
) -> tuple[int, str]:
    torch.manual_seed(0)
    model = model_for_training(model_name, images, labels)
    with tempfile.TemporaryDirectory() as d:
        res = drive(
            train(
                model,
                images,
                labels,
                TrainConfig(time_budget=seconds, epochs=10_000, device=device),
                checkpoint=Path(d) / "m",
            )
        )
    t = res.model.card.training or {}
    shape = f"{t.get('batch_size')} x {'x'.join(map(str, t.get('patch', [])))}"
    return int(t["steps"]), shape


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--models", default="unet,unet-instance,unet3d")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the bare loop in float32, the product as it trains)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # both loops on the heap the product sets up for its runs (heap.py), the bare one too
    if not (ISBI / "image").is_dir():
        print(f"ISBI data not found at {ISBI}", file=sys.stderr)
        return 1
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.device}, "
        f"{args.seconds:.0f} s each"
    )
    print("| model | batch x crop | bare loop steps | steps/s | segsuite train steps | steps/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        images, labels = load(name)
        n_bare = bare_loop(name, images, labels, args.seconds, args.device)
        n_prod, shape = product(name, images, labels, args.seconds, args.device)
        print(
            f"| {name} | {shape} | {n_bare} | {n_bare / args.seconds:.2f} | {n_prod} | "
            f"{n_prod / args.seconds:.2f} | {n_prod / max(n_bare, 1):.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
