"""Panoptic quality (Kirillov et al., 2019) with the COCO panoptic handling of unannotated pixels."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .base import IGNORE

#: Columns of the per-class count table of :func:`pq_counts`.
TP, FP, FN, IOU_SUM = 0, 1, 2, 3


def _thing_lut(thing_classes: Iterable[int], num_classes: int) -> np.ndarray:
    lut = np.zeros(num_classes, bool)
    for c in thing_classes:
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"Thing class {c} is outside 0..{num_classes - 1}.")
        lut[int(c)] = True
    return lut


def _segment_ids(
    sem: np.ndarray, inst: np.ndarray, things: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flat segment index per pixel (-1: in no segment) and the class of each segment.

    A stuff class is one segment; a thing class has one segment per instance id (id <= 0: none).
    """
    k = len(things)
    sem = sem.astype(np.int64).ravel()
    inst = inst.astype(np.int64).ravel()
    known = keep.ravel() & (sem >= 0) & (sem < k)
    is_thing = np.zeros_like(known)
    is_thing[known] = things[sem[known]]
    known &= ~is_thing | (inst > 0)
    key = np.full(sem.shape, -1, np.int64)
    stride = int(inst.max(initial=0)) + 1
    key[known] = sem[known] * stride + np.where(is_thing[known], inst[known], 0)
    uniq, inv = np.unique(key[known], return_inverse=True)
    ids = np.full(sem.shape, -1, np.int64)
    ids[known] = inv
    return ids, uniq // stride


def pq_counts(
    pred_sem: np.ndarray,
    pred_inst: np.ndarray,
    gt_sem: np.ndarray,
    gt_inst: np.ndarray,
    thing_classes: Iterable[int],
    num_classes: int,
    ignore: int = IGNORE,
) -> np.ndarray:
    """Per-class panoptic counts of one image, to be summed over images and given to :func:`pq_from_counts`.

    Segments of the same class match when their IoU exceeds 0.5 (one-to-one by construction).
    Ground-truth pixels that are ``ignore`` (in either image), and thing pixels without an
    instance id, are *void*: left out of every IoU, and a predicted segment lying more than half
    on void is not a false positive (the COCO panoptic convention).

    Returns:
        ``(num_classes, 4)`` float64: true positives, false positives, false negatives and the
        sum of the true positives' IoUs (columns :data:`TP`, :data:`FP`, :data:`FN`, :data:`IOU_SUM`).
    """
    gt_sem, gt_inst = np.asarray(gt_sem), np.asarray(gt_inst)
    pred_sem, pred_inst = np.asarray(pred_sem), np.asarray(pred_inst)
    if not (gt_sem.shape == gt_inst.shape == pred_sem.shape == pred_inst.shape):
        raise ValueError("Predicted and true semantic and instance images must have one shape.")
    things = _thing_lut(thing_classes, num_classes)
    gt_ids, gt_cls = _segment_ids(gt_sem, gt_inst, things, (gt_sem != ignore) & (gt_inst != ignore))
    void = gt_ids < 0
    pred_ids, pred_cls = _segment_ids(pred_sem, pred_inst, things, np.ones(pred_sem.shape, bool))
    n_gt, n_pred = len(gt_cls), len(pred_cls)
    gt_area = np.bincount(gt_ids[~void], minlength=n_gt)
    in_pred = pred_ids >= 0
    pred_full = np.bincount(pred_ids[in_pred], minlength=n_pred)
    pred_void = np.bincount(pred_ids[in_pred & void], minlength=n_pred)
    both = in_pred & ~void
    pairs, inter = np.unique(gt_ids[both] * max(n_pred, 1) + pred_ids[both], return_counts=True)
    g, p = pairs // max(n_pred, 1), pairs % max(n_pred, 1)
    iou = inter / (gt_area[g] + (pred_full - pred_void)[p] - inter)
    hit = (gt_cls[g] == pred_cls[p]) & (iou > 0.5)
    counts = np.zeros((num_classes, 4))
    np.add.at(counts[:, TP], gt_cls[g[hit]], 1)
    np.add.at(counts[:, IOU_SUM], gt_cls[g[hit]], iou[hit])
    gt_hit = np.zeros(n_gt, bool)
    gt_hit[g[hit]] = True
    pred_hit = np.zeros(n_pred, bool)
    pred_hit[p[hit]] = True
    np.add.at(counts[:, FN], gt_cls[~gt_hit], 1)
    mostly_void = pred_void > 0.5 * pred_full
    np.add.at(counts[:, FP], pred_cls[~pred_hit & ~mostly_void], 1)
    return counts


def pq_from_counts(counts: np.ndarray, thing_classes: Iterable[int] = ()) -> dict:
    """PQ, SQ and RQ from summed :func:`pq_counts`.

    Per class: PQ = sum IoU(TP) / (TP + FP/2 + FN/2), SQ = mean IoU of the TPs, RQ = TP / (TP +
    FP/2 + FN/2). The averages run over the classes present (a TP, FP or FN); an average over no
    class is NaN.

    Returns:
        ``pq``, ``sq``, ``rq``, ``pq_things``, ``pq_stuff`` (floats) and ``pq_per_class``,
        ``sq_per_class``, ``rq_per_class`` (dicts class index -> value, classes present only).
    """
    counts = np.asarray(counts, np.float64)
    tp, fp, fn, iou_sum = counts.T
    denom = tp + fp / 2 + fn / 2
    present = denom > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq_c = np.where(present, iou_sum / denom, np.nan)
        sq_c = np.where(tp > 0, iou_sum / tp, 0.0)
        rq_c = np.where(present, tp / denom, np.nan)
    things = _thing_lut(thing_classes, len(counts))

    def mean(values: np.ndarray, sel: np.ndarray) -> float:
        return float(values[sel].mean()) if sel.any() else float("nan")

    cls = np.nonzero(present)[0]
    return {
        "pq": mean(pq_c, present),
        "sq": mean(sq_c, present),
        "rq": mean(rq_c, present),
        "pq_things": mean(pq_c, present & things),
        "pq_stuff": mean(pq_c, present & ~things),
        "pq_per_class": {int(c): float(pq_c[c]) for c in cls},
        "sq_per_class": {int(c): float(sq_c[c]) for c in cls},
        "rq_per_class": {int(c): float(rq_c[c]) for c in cls},
    }


def pq(
    pred_sem: np.ndarray,
    pred_inst: np.ndarray,
    gt_sem: np.ndarray,
    gt_inst: np.ndarray,
    thing_classes: Iterable[int],
    num_classes: int,
    ignore: int = IGNORE,
) -> dict:
    """Panoptic quality of one image: :func:`pq_from_counts` of :func:`pq_counts` (same arguments)."""
    thing_classes = tuple(thing_classes)
    counts = pq_counts(pred_sem, pred_inst, gt_sem, gt_inst, thing_classes, num_classes, ignore)
    return pq_from_counts(counts, thing_classes)
