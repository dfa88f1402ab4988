"""Every registered instance model and cellpose 3, trained from scratch for the same wall-clock budget.

Datasets: ``generated`` (nuclei_2d, train seeds 0..7 at 256x256, evaluate on seeds 500..504) and
``isbi`` (ISBI 2012 slices 0-19 train, 20-29 evaluate; cells = connected components, connectivity 1,
of each label slice's membrane-free interior, components under 20 px dropped).

Per model and dataset, in a fresh subprocess (so peak memory is its own): the engine's own path
(``workflows.model_for_training``, ``training.train`` with ``TrainConfig(time_budget=...)`` and
defaults otherwise, ``workflows.evaluate``); AP50, AP50:95 and F1 on the held-out images (counts
summed over images); segmentation time of one 512x512 image (median of 3, after evaluation warmed
up); peak resident memory of the process. Cellpose 3 (``pip install "cellpose<4"``) is the external
baseline: a CPnet from random weights trained with ``cellpose.train.train_seg`` (its command line's
SGD settings), epochs chosen from a one-epoch timing probe so flows, probe and training fit the
same budget; its masks are scored with the same metrics. The native 3D model (unet3d-instance) gets
a second small table on nuclei_3d volumes beside unet-instance run slice by slice.

    .venv/bin/python bench/instance.py [--seconds 120] [--models "unet-instance;solo;cellpose3"]
        [--datasets "generated;isbi"] [--device cpu] [--data ../shared/data/isbi2012]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLPOSE = "cellpose3"
DATASETS = ("generated", "isbi")
_OPTIONAL_MODULES = ("maskrcnn",)  # model files that may exist before the package imports them


def _register_optional() -> None:
    """Import model files not (yet) imported by ``napari_segsuite.models``; a broken one is skipped."""
    import napari_segsuite.models  # noqa: F401  (registers the built-in models)

    for mod in _OPTIONAL_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(f"napari_segsuite.models.{mod}")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_dataset(name: str, data_root: str) -> dict:
    """``{"train": (images, ids), "test": (images, ids), "probe": 512x512 image}`` of one dataset."""
    import numpy as np

    if name == "generated":
        from napari_segsuite import sample_data as sd

        tr = [sd.nuclei_2d(seed=i, shape=(256, 256)) for i in range(8)]
        te = [sd.nuclei_2d(seed=500 + i, shape=(256, 256)) for i in range(5)]
        return {
            "train": ([s["image"] for s in tr], [s["instances"] for s in tr]),
            "test": ([s["image"] for s in te], [s["instances"] for s in te]),
            "probe": sd.nuclei_2d(seed=900, shape=(512, 512))["image"],
        }
    if name == "isbi":
        from skimage.measure import label

        from napari_segsuite.io import read_image

        root = Path(data_root)
        img = [read_image(root / "image" / f"{i}.png") for i in range(30)]
        ids = []
        for i in range(30):
            interior = read_image(root / "label" / f"{i}.png") > 0  # 255 interior, 0 membrane
            cells = label(interior, connectivity=1)
            big = np.bincount(cells.ravel()) >= 20
            big[0] = False
            ids.append(label(big[cells], connectivity=1).astype(np.int32))  # components of >= 20 px, ids 1..N
        return {"train": (img[:20], ids[:20]), "test": (img[20:], ids[20:]), "probe": img[20]}
    if name == "generated3d":
        from napari_segsuite import sample_data as sd

        tr = [sd.nuclei_3d(seed=i) for i in range(4)]
        te = [sd.nuclei_3d(seed=500 + i) for i in range(2)]
        return {
            "train": ([s["image"] for s in tr], [s["instances"] for s in tr]),
            "test": ([s["image"] for s in te], [s["instances"] for s in te]),
            "probe": te[0]["image"],
        }
    raise ValueError(f"Unknown dataset {name!r}; choose from {', '.join(DATASETS)}.")


def _median_time(fn, n: int = 3) -> float:
    import numpy as np

    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure_engine(name: str, data: dict, seconds: float, device: str) -> dict:
    """Train, evaluate and time one registered model exactly as the CLI and widgets do."""
    import torch

    from napari_segsuite.inference import segment
    from napari_segsuite.progress import drive
    from napari_segsuite.training import TrainConfig, train
    from napari_segsuite.workflows import evaluate, model_for_training

    _register_optional()
    torch.manual_seed(0)
    (tr_i, tr_l), (te_i, te_l) = data["train"], data["test"]
    t = time.perf_counter()
    model = model_for_training(name, tr_i, tr_l)
    res = drive(train(model, tr_i, tr_l, TrainConfig(time_budget=seconds, device=device)))
    t_train = time.perf_counter() - t
    m = drive(evaluate(res.model, te_i, te_l, device=device))
    t_inf = _median_time(lambda: drive(segment(res.model, data["probe"], device=device)))
    return {
        "train_s": t_train,
        "ap50": m["ap50"],
        "ap50_95": m["ap50_95"],
        "f1": m["f1"],
        "infer_s": t_inf,
        "note": f"{res.model.card.training['steps']} steps, {res.stopped}",
    }


def measure_cellpose(data: dict, seconds: float, device: str) -> dict:
    """Cellpose 3 from random weights (no download), trained with ``train_seg`` within ``seconds``."""
    import numpy as np
    import torch
    from cellpose import dynamics, models
    from cellpose import train as cp_train

    from napari_segsuite.tasks import instance

    torch.manual_seed(0)
    dev = torch.device(device)
    (tr_i, tr_l), (te_i, te_l) = data["train"], data["test"]
    channels = [0, 0]  # grayscale, no nuclear channel
    # cellpose's command-line training settings (SGD, lr 0.2, weight decay 1e-5, batch 8); one batch per
    # epoch, so its 10-epoch warm-up and the timing probe are 10 and 1 optimiser steps on every dataset
    opts = {
        "channels": channels,
        "learning_rate": 0.2,
        "weight_decay": 1e-5,
        "SGD": True,
        "batch_size": 8,
        "nimg_per_epoch": 8,
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        # pretrained_model=False and model_type=None: a CPnet with random weights, nothing is loaded
        cp = models.CellposeModel(device=dev, pretrained_model=False, model_type=None, nchan=2)
        images = [np.asarray(im, np.float32) for im in tr_i]
        flows = dynamics.labels_to_flows([np.asarray(lb) for lb in tr_l], device=dev)  # once, for both calls
        # timing probe: one epoch (learning rate 0 in cellpose's warm-up, so the weights do not move)
        t_probe = time.perf_counter()
        cp_train.train_seg(cp.net, images, flows, n_epochs=1, save_path=tmp, **opts)
        t_epoch = time.perf_counter() - t_probe
        epochs = max(1, int((seconds - (time.perf_counter() - t)) / t_epoch))
        cp_train.train_seg(cp.net, images, flows, n_epochs=epochs, save_path=tmp, **opts)
        t_train = time.perf_counter() - t
    diameter = float(cp.net.diam_labels.item())  # mean training diameter, as a saved model would carry

    def run(im):
        return cp.eval(np.asarray(im, np.float32), channels=channels, diameter=diameter)[0]

    ious, n_pred, n_true = [], 0, 0
    for im, gt in zip(te_i, te_l):
        pred = run(im)
        m = instance.metrics(pred, gt)
        ious.append(instance.match(pred, gt))
        n_pred, n_true = n_pred + m["n_pred"], n_true + m["n_true"]
    m = instance.metrics_from_matches(np.concatenate(ious) if ious else np.zeros(0), n_pred, n_true)
    t_inf = _median_time(lambda: run(data["probe"]))
    return {
        "train_s": t_train,
        "ap50": m["ap50"],
        "ap50_95": m["ap50_95"],
        "f1": m["f1"],
        "infer_s": t_inf,
        "note": f"{epochs} epochs",
    }


def measure(name: str, dataset: str, seconds: float, device: str, data_root: str) -> dict:
    data = load_dataset(dataset, data_root)
    if name == CELLPOSE:
        out = measure_cellpose(data, seconds, device)
    else:
        out = measure_engine(name, data, seconds, device)
    return {"name": name, "dataset": dataset, **out, "peak_mb": _peak_rss_mib()}


def _model_names(arg: str) -> tuple[list[str], list[str]]:
    """(2D models incl. cellpose, native 3D models) to run."""
    _register_optional()
    from napari_segsuite.models import available

    specs = available("instance")
    dims = {s.name: s.spatial_dims for s in specs}
    names = arg.split(";") if arg else [s.name for s in specs] + [CELLPOSE]
    return [n for n in names if dims.get(n, 2) == 2], [n for n in names if dims.get(n, 2) == 3]


def _run_one(name: str, dataset: str, args: argparse.Namespace) -> dict | None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CELLPOSE_LOCAL_MODELS_PATH": tempfile.gettempdir()}
    cmd = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--datasets",
        dataset,
        "--seconds",
        str(args.seconds),
        "--device",
        args.device,
        "--data",
        args.data,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        print(f"{name} on {dataset}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    print(f"measured {name} on {dataset}", file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_table(rows: list[dict], infer_header: str) -> None:
    print(f"| dataset | model | train s | AP50 | AP50:95 | F1 | {infer_header} | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "missing" in r:
            print(f"| {r['dataset']} | {r['name']} | {r['missing']} | | | | | |")
            continue
        print(
            f"| {r['dataset']} | {r['name']} ({r['note']}) | {r['train_s']:.0f} | {r['ap50']:.3f} | "
            f"{r['ap50_95']:.3f} | {r['f1']:.3f} | {r['infer_s']:.2f} | {r['peak_mb']:.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=120, help="training budget per model per dataset")
    p.add_argument("--models", default="", help='";"-separated subset, e.g. "unet-instance;cellpose3"')
    p.add_argument("--datasets", default=";".join(DATASETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/isbi2012"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.datasets, args.seconds, args.device, args.data)))
        return
    names2d, names3d = _model_names(args.models)
    datasets = [d for d in args.datasets.split(";") if d]
    has_cellpose = importlib.util.find_spec("cellpose") is not None
    rows = []
    for ds in datasets:
        for n in names2d:
            if n == CELLPOSE and not has_cellpose:
                rows.append({"name": n, "dataset": ds, "missing": 'not installed (pip install "cellpose<4")'})
                continue
            r = _run_one(n, ds, args)
            if r is not None:
                rows.append(r)
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(
        f"device: {args.device}, OMP_NUM_THREADS={threads}; each model trained from random weights for "
        f"{args.seconds:.0f} s per dataset; AP50, AP50:95, F1 on held-out images\n"
    )
    _print_table(rows, "inference s / 512x512")
    if names3d and "generated" in datasets:  # native 3D models against the 2D UNet run slice by slice
        rows3d = [r for n in (["unet-instance"] + names3d) if (r := _run_one(n, "generated3d", args))]
        print("\nnuclei_3d volumes (train seeds 0..3, evaluate 500..501, 32x128x128)\n")
        _print_table(rows3d, "inference s / volume")


if __name__ == "__main__":
    main()
