"""What the memory layout and bfloat16 autocast do on this machine: forward and training speed per model.

For each model, in one process: the forward pass (batch 1, ``--tile`` square, Mpx/s) and the training
step (batch 4 of ``--crop`` squares, cross-entropy, AdamW: steps/s), first as plain PyTorch runs it
(float32, the default NCHW layout: the baseline), then channels-last, then channels-last with bfloat16
autocast (what the engine runs where :mod:`napari_segsuite.layout` says so). Ratios are against the
baseline. 3D models run ``--depth``-slice crops in the channels-last-3D layout.

    .venv/bin/python bench/precision.py --models unet,unet-instance,deeplabv3plus,unet3d --threads 1,2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds`` (after one warm-up call)."""
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def measure(
    module: torch.nn.Module,
    shape: tuple[int, ...],
    crop: tuple[int, ...],
    fmt: torch.memory_format | None,
    bf16: bool,
    secs: float,
) -> tuple[float, float]:
    """(forward Mpx/s on one input of ``shape``, training steps/s on 4 crops of ``crop``) of ``module`` in
    layout ``fmt`` (``None``: the default)."""
    mod = copy.deepcopy(module)
    mod.to(memory_format=fmt or torch.contiguous_format)
    px = 1
    for s in shape:
        px *= s
    x1, x4 = torch.randn(1, 1, *shape), torch.randn(4, 1, *crop)
    y4 = torch.randint(0, 2, (4, *crop))
    cast = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": bf16}

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(**cast):
            mod(x1).float().softmax(1)

    opt = torch.optim.AdamW(mod.parameters(), 1e-3)

    def step() -> None:
        with torch.autocast(**cast):
            loss = torch.nn.functional.cross_entropy(mod(x4).float(), y4)
        opt.zero_grad()
        loss.backward()
        opt.step()

    mod.eval()
    fwd = rate(forward, secs) * px / 1e6
    mod.train()
    return fwd, rate(step, secs)


def main() -> None:
    from napari_segsuite.heap import reuse_freed_memory
    from napari_segsuite.model_files import new_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="unet,unet-instance,unet3d")
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma separated")
    p.add_argument("--tile", type=int, default=512, help="forward pass tile edge (2D)")
    p.add_argument("--crop", type=int, default=256, help="training crop edge (2D; 3D: 64)")
    p.add_argument("--depth", type=int, default=16, help="3D crops' slices")
    p.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    args = p.parse_args()
    reuse_freed_memory()  # as the engine runs
    print(f"AMX: {torch.cpu._is_amx_tile_supported()}; forward batch 1, training step batch 4")
    print("| model | threads | fp32 NCHW fwd Mpx/s | train steps/s | channels-last fwd | train | + bf16 fwd | train |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        module = new_model(name, label_values=[0, 1, 2] if "instance" in name else [0, 1]).module
        three_d = any(isinstance(m, torch.nn.Conv3d) for m in module.modules())
        fmt = torch.channels_last_3d if three_d else torch.channels_last
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            shape = (args.depth, 128, 128) if three_d else (args.tile, args.tile)
            crop = (args.depth, 64, 64) if three_d else (args.crop, args.crop)
            base = measure(module, shape, crop, None, False, args.seconds)
            cl = measure(module, shape, crop, fmt, False, args.seconds)
            bf = measure(module, shape, crop, fmt, True, args.seconds)
            cells = [f"{base[0]:.2f}", f"{base[1]:.2f}"]
            cells += [f"{v[i]:.2f} ({v[i] / base[i]:.2f}x)" for v in (cl, bf) for i in (0, 1)]
            print(f"| {name} | {threads} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
