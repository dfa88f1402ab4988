"""Object metrics as bioimage tools report them (StarDist, cellpose): one-to-one matching by IoU,
AP at an IoU threshold as TP / (TP + FP + FN), accumulated over images."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .base import Segmentation, Targets


def relabel(labels: np.ndarray) -> np.ndarray:
    """Ids made consecutive 1..N in order of first appearance in memory order (0 stays 0)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def _iou_matrix(a: np.ndarray, b: np.ndarray, of_smaller: bool = False) -> np.ndarray:
    """IoU of every object of ``a`` (rows, ids 1..a.max()) with every object of ``b`` (cols); with
    ``of_smaller``, the intersection over the smaller object's area instead."""
    na, nb = int(a.max()), int(b.max())
    cont = np.bincount(a.ravel().astype(np.int64) * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1))
    cont = cont.reshape(na + 1, nb + 1)
    area_a, area_b = cont.sum(1), cont.sum(0)
    inter = cont[1:, 1:].astype(np.float64)
    if of_smaller:
        union = np.minimum(area_a[1:, None], area_b[None, 1:]).astype(np.float64)
    else:
        union = area_a[1:, None] + area_b[None, 1:] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoUs of the one-to-one matching of predicted to true objects that maximises total IoU
    (Hungarian on the IoU matrix); only pairs with IoU > 0 are returned."""
    pred = relabel(np.asarray(pred))
    gt = relabel(np.asarray(gt))
    if pred.max() == 0 or gt.max() == 0:
        return np.zeros(0)
    iou = _iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-iou)
    m = iou[rows, cols]
    return m[m > 0]


def metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Object metrics in the sense used by bioimage tools (StarDist, cellpose).

    At a threshold t, a matched pair with IoU >= t is a true positive; AP(t) = TP / (TP + FP + FN).
    Returns ``ap50``, ``ap50_95`` (mean over t = 0.5, 0.55, ..., 0.95), ``f1`` (at 0.5) and
    ``mean_matched_iou`` (mean IoU of the pairs matched at 0.5), plus the counts.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    n_pred = len(np.unique(pred[pred > 0]))
    n_gt = len(np.unique(gt[gt > 0]))
    ious = match(pred, gt) if n_pred and n_gt else np.zeros(0)
    return metrics_from_matches(ious, n_pred, n_gt)


def metrics_from_matches(ious: np.ndarray, n_pred: int, n_gt: int) -> dict[str, float]:
    """Metrics of :func:`metrics` from matched IoUs and object counts (summed over images)."""

    def ap(t: float) -> float:
        tp = int((ious >= t).sum())
        denom = n_pred + n_gt - tp
        return tp / denom if denom else 1.0

    tp50 = int((ious >= 0.5).sum())
    f1 = 2 * tp50 / (n_pred + n_gt) if (n_pred + n_gt) else 1.0
    thresholds = np.arange(0.5, 0.951, 0.05)
    return {
        "ap50": ap(0.5),
        "ap50_95": float(np.mean([ap(t) for t in thresholds])),
        "f1": f1,
        "mean_matched_iou": float(ious[ious >= 0.5].mean()) if tp50 else 0.0,
        "n_pred": n_pred,
        "n_true": n_gt,
    }


class ObjectMetric:
    """Object metrics (:func:`metrics_from_matches`) accumulated over images; pixels whose true id
    is unknown (-1) are left out."""

    def __init__(self) -> None:
        self.ious: list[np.ndarray] = []
        self.n_pred: int = 0
        self.n_true: int = 0

    def update(self, pred: Segmentation, truth: Targets) -> None:
        if pred.instances is None or truth.ids is None:
            raise ValueError("An object metric needs predicted and true object ids.")
        known = truth.ids >= 0
        gt = np.where(known, truth.ids, 0)
        ids = np.where(known, pred.instances, 0)
        m = metrics(ids, gt)
        self.ious.append(match(ids, gt))
        self.n_pred += int(m["n_pred"])
        self.n_true += int(m["n_true"])

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = metrics_from_matches(
            np.concatenate(self.ious) if self.ious else np.zeros(0), self.n_pred, self.n_true
        )
        out["score"] = out["ap50"]
        return out
