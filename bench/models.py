"""Every registered semantic model in one table: size, speed, memory and what it learns.

Per model, in a fresh subprocess (so peak memory is its own): parameters; forward time of one
512x512 image (median of 3 after a warm-up); one training step (batch 4 of 256x256); peak
resident memory of the process (CPU) or peak CUDA memory; mean IoU on 4 unseen images of the
generated 3-class task after a fixed number of training steps (96x96 crops, batch 4).
Times are also given as ratios to UNet, measured in the same run.

    .venv/bin/python bench/models.py [--device cpu|cuda] [--steps 150] [--models "unet;enet;segnet:base_filters=64"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _spec(name: str) -> tuple[str, dict]:
    """``"segnet:base_filters=64"`` -> (``"segnet"``, ``{"base_filters": 64}``): a model with builder arguments."""
    arch, _, rest = name.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        kw[k] = int(v) if v.isdigit() else v
    return arch, kw


def measure(name: str, device: str, steps: int) -> dict:
    import numpy as np
    import torch

    from napari_segsuite import sample_data as sd
    from napari_segsuite.inference import predict
    from napari_segsuite.io import new_model
    from napari_segsuite.progress import drive
    from napari_segsuite.tasks import semantic
    from napari_segsuite.training import TrainConfig, train

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    arch, kw = _spec(name)
    model = new_model(arch, label_values=[0, 1, 2], **kw)
    net = model.module.to(dev)
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 1, 512, 512, device=dev)
    net.eval()
    times = []
    with torch.inference_mode():
        for _ in range(4):
            sync()
            t = time.perf_counter()
            net(x)
            sync()
            times.append(time.perf_counter() - t)
    fwd = float(np.median(times[1:]))
    net.train()
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    xb, yb = torch.randn(4, 1, 256, 256, device=dev), torch.randint(0, 3, (4, 256, 256), device=dev)
    st = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        loss = semantic.loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        st.append(time.perf_counter() - t)
    step = float(np.median(st[1:]))
    tr = [sd.shapes_multiclass(seed=i) for i in range(8)]
    te = [sd.shapes_multiclass(seed=1000 + i) for i in range(4)]
    torch.manual_seed(0)
    model = new_model(arch, label_values=[0, 1, 2], **kw)
    cfg = TrainConfig(epochs=1, steps_per_epoch=steps, patch_size=96, batch_size=4, device=device, seed=0)
    t = time.perf_counter()
    res = drive(train(model, [s["image"] for s in tr], [s["semantic"] for s in tr], cfg))
    t_train = time.perf_counter() - t
    cm = sum(
        semantic.confusion(drive(predict(res.model, s["image"], output="classes", device=device)), s["semantic"], 3)
        for s in te
    )
    peak = (
        (torch.cuda.max_memory_allocated() / 2**20)
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "name": name,
        "params": params,
        "fwd": fwd,
        "step": step,
        "peak_mb": peak,
        "miou": semantic.metrics_from_confusion(cm)["mean_iou"],
        "train_s": t_train,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--models", default="")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.steps)))
        return
    from napari_segsuite.models import available

    names = args.models.split(";") if args.models else [s.name for s in available("semantic") if s.spatial_dims == 2]
    if not args.models:
        names.append("segnet:base_filters=64")  # SegNet at VGG16 widths, the paper's ENet comparison
    if "unet" not in names:
        names = ["unet"] + names
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for n in names:
        out = subprocess.run(
            [sys.executable, __file__, "--one", n, "--device", args.device, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode:
            print(f"{n}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"measured {n}", file=sys.stderr)
    base = next(r for r in rows if r["name"] == "unet")
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"device: {args.device}; IoU after {args.steps} steps of 4x96x96 on the generated 3-class task\n")
    print(
        f"| model | params (M) | forward 512x512 (ms) | vs UNet | train step 4x256x256 (ms) | vs UNet | {mem} | mean IoU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["fwd"]):
        print(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['fwd'] * 1e3:.0f} | {r['fwd'] / base['fwd']:.2f} | "
            f"{r['step'] * 1e3:.0f} | {r['step'] / base['step']:.2f} | {r['peak_mb']:.0f} | {r['miou']:.3f} |"
        )


if __name__ == "__main__":
    main()
