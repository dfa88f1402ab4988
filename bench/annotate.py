"""A simulated annotator: clicks on images with ground-truth objects and counts the clicks to IoU 0.9.

For each true object (in a random order, at most ``--max-objects`` per image), the annotator clicks
at the centre (the maximum of the distance transform) of the object, then, up to 20 clicks, at the
centre of the largest remaining error region: positive inside a part of the object that is missed,
negative inside a part labelled that is not the object. Objects done stay in the labels (as for a
user), so a later object may be hemmed in by an earlier mistake. Latency is the engine's
``add_click`` alone; the model's maps are computed once per image before the first click (reported
as ``ms_maps``).

Labels: instance ids; a label image with two values (a mask, e.g. ISBI 2012's 0/255) is turned into
objects as its connected regions (4-connected, regions under ``--min-size`` px dropped).

    .venv/bin/python bench/annotate.py --images DIR --labels DIR [--model PATH] [--json]
        [--max-objects 60] [--limit N] [--device cpu] [--histories FILE]

``--histories FILE`` writes each object's clicks as JSON lines (``source``, ``image``, ``id``,
``area``, ``clicks``, ``reached`` and ``history``: per click ``[y, x, positive, IoU, size]``), to see
why an object took more than one click (an outline a rim too large or too small, a merge, a split).

``--json`` prints one object ``{"model": {...}, "no_model": {...}}`` (only ``"no_model"`` without
``--model``), each with ``objects``, ``noc90`` (mean clicks per object to reach IoU >= 0.9, objects
never reaching it count 20), ``iou_at_1`` (mean IoU after one click), ``ms_per_click`` (median
latency), ``ms_maps`` and ``reached`` (share of objects reaching IoU 0.9).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from scipy import ndimage as ndi

MAX_CLICKS = 20
TARGET = 0.9


def instances_of(labels: np.ndarray, min_size: int = 20) -> np.ndarray:
    """Object ids from a label image: itself when it holds ids, its 4-connected regions when it is a mask."""
    lab = np.asarray(labels)
    if len(np.unique(lab)) <= 2:
        ids, _ = ndi.label(lab > 0)
    else:
        ids = lab.astype(np.int64)
    sizes = np.bincount(ids.ravel())
    small = sizes < min_size
    small[0] = False
    ids[small[ids]] = 0
    return ids.astype(np.int32)


def _centre(mask: np.ndarray) -> tuple[int, int]:
    """The pixel deepest inside ``mask``; of equally deep ones (a thin error is one pixel deep all
    along), the one nearest the region's centroid: the middle of a thin arc, not its first pixel in
    raster order."""
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(d == d.max())
    cy, cx = (float(v.mean()) for v in np.nonzero(mask))
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(ys[k]), int(xs[k])


def _largest(mask: np.ndarray) -> tuple[int, np.ndarray]:
    comps, n = ndi.label(mask)
    if not n:
        return 0, mask
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    k = int(sizes.argmax())
    return int(sizes[k]), comps == k


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 0.0


Result = tuple[int, float, list[float], bool, list[list[Any]]]


def annotate_image(session: Any, truth: np.ndarray, ids: list[int]) -> list[Result]:
    """Play the annotator on ``ids`` of ``truth``; per object ``(clicks to IoU 0.9 or 20, IoU after one
    click, click latencies in ms, whether IoU 0.9 was reached, the clicks as [y, x, positive, IoU after
    it, object's size after it])``."""
    out = []
    for i in ids:
        obj = truth == i
        times: list[float] = []
        history: list[list[Any]] = []
        clicks, first, reached = MAX_CLICKS, 0.0, False
        y, x, positive, new = *_centre(obj), True, True
        for n in range(1, MAX_CLICKS + 1):
            t0 = time.perf_counter()
            session.add_click(y, x, positive=positive, new_object=new)
            times.append((time.perf_counter() - t0) * 1000)
            new = False
            pred = session.labels == session.active if session.active else np.zeros_like(obj)
            iou = _iou(pred, obj)
            history.append([y, x, positive, round(iou, 4), int(pred.sum())])
            if n == 1:
                first = iou
            if iou >= TARGET:
                clicks, reached = n, True
                break
            n_miss, miss = _largest(obj & ~pred)
            n_extra, extra = _largest(pred & ~obj)
            positive = n_miss >= n_extra
            y, x = _centre(miss if positive else extra)
        session.finish()
        out.append((clicks, first, times, reached, history))
    return out


def run(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    model: Any = None,
    *,
    max_objects: int = 60,
    seed: int = 0,
    device: str = "cpu",
    min_size: int = 20,
    histories: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The annotator over ``(image, labels)`` pairs with ``model`` (``None``: the classical fallback);
    each object's clicks are appended to ``histories`` where given."""
    from napari_segsuite.annotate import AnnotationSession, compute_maps
    from napari_segsuite.progress import drive

    rng = np.random.default_rng(seed)
    results: list[Result] = []
    maps_ms = []
    for k, (image, labels) in enumerate(pairs):
        truth = instances_of(labels, min_size)
        t0 = time.perf_counter()
        maps = drive(compute_maps(model, image, device=device))
        maps_ms.append((time.perf_counter() - t0) * 1000)
        session = AnnotationSession(image, maps=maps)
        ids = [int(i) for i in np.unique(truth) if i]
        ids = [int(i) for i in rng.permutation(ids)[:max_objects]]
        done = annotate_image(session, truth, ids)
        results += done
        if histories is not None:
            for i, r in zip(ids, done):
                area = int((truth == i).sum())
                histories.append({"image": k, "id": i, "area": area, "clicks": r[0], "reached": r[3], "history": r[4]})
    clicks = [r[0] for r in results]
    return {
        "objects": len(results),
        "noc90": float(np.mean(clicks)) if clicks else float("nan"),
        "iou_at_1": float(np.mean([r[1] for r in results])) if results else float("nan"),
        "ms_per_click": float(np.median([t for r in results for t in r[2]])) if results else float("nan"),
        "ms_maps": float(np.median(maps_ms)) if maps_ms else float("nan"),
        "reached": float(np.mean([r[3] for r in results])) if results else float("nan"),
    }


def read_pairs(images: str, labels: str, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    from napari_segsuite.io import match_pairs, read_image, read_labels

    pairs = match_pairs(images, labels)[:limit]
    return [(read_image(i), read_labels(lab, i)) for i, lab in pairs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--model", help="a trained model's folder or stored name (also runs without it)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-objects", type=int, default=60, help="objects per image (a random sample)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--min-size", type=int, default=20, help="objects smaller than this (px) are not clicked")
    p.add_argument("--device", default="cpu")
    p.add_argument("--histories", help="write each object's clicks to this file (JSON lines)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    pairs = read_pairs(args.images, args.labels, args.limit)
    opts: dict[str, Any] = {"max_objects": args.max_objects, "device": args.device, "min_size": args.min_size}
    report: dict[str, Any] = {}
    kept: dict[str, list[dict[str, Any]]] = {"model": [], "no_model": []}
    if args.model:
        from napari_segsuite.model_files import load_model
        from napari_segsuite.store import resolve_trained

        model = load_model(resolve_trained(args.model))
        report["model"] = {"name": args.model, **run(pairs, model, **opts, histories=kept["model"])}
    report["no_model"] = run(pairs, None, **opts, histories=kept["no_model"])
    if args.histories:
        with open(args.histories, "w") as f:
            for source, rows in kept.items():
                for row in rows:
                    f.write(json.dumps({"source": source, **row}) + "\n")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{len(pairs)} image(s); up to {args.max_objects} objects each; IoU target {TARGET}, at most {MAX_CLICKS}")
    print(f"{'source':<12} {'objects':>7} {'NoC90':>6} {'IoU@1':>6} {'ms/click':>9} {'ms maps':>8}")
    for key, r in report.items():
        print(
            f"{key:<12} {r['objects']:>7} {r['noc90']:>6.2f} {r['iou_at_1']:>6.3f} {r['ms_per_click']:>9.1f} "
            f"{r['ms_maps']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
