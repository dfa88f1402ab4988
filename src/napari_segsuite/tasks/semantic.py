"""Semantic segmentation: one class per pixel.

Targets are int64 class indices ``(N, H, W)`` with ``IGNORE`` (-1) where a pixel carries no label
(padding, or values the model does not know); the loss skips those pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -1


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over classes, both ignoring ``IGNORE`` pixels.

    Args:
        logits: ``(N, K, H, W)`` or ``(N, K, D, H, W)`` float.
        target: ``(N, H, W)`` or ``(N, D, H, W)`` int64 in ``0..K-1`` or ``IGNORE``.

    Cross-entropy drives every pixel; the Dice term keeps a rare class (a thin membrane, small
    nuclei) from being swamped by the background.
    """
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE)
    probs = logits.float().softmax(1)
    k = logits.shape[1]
    onehot = F.one_hot(target.clamp(min=0), k).movedim(-1, 1).float()
    mask = valid.unsqueeze(1).float()
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot * mask).sum(dims)
    denom = ((probs + onehot) * mask).sum(dims)
    present = onehot.mul(mask).sum(dims) > 0
    dice = (2 * inter + 1) / (denom + 1)
    dice_loss = 1 - dice[present].mean() if present.any() else ce * 0
    return ce + dice_loss


def postprocess(probs: np.ndarray) -> np.ndarray:
    """Class index per pixel from ``(K, ...)`` probabilities: argmax over the first axis."""
    return probs.argmax(axis=0)


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` confusion counts, rows = ground truth, columns = prediction; ``IGNORE`` gt skipped."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    gt = np.asarray(gt).ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < num_classes)
    return np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, object]:
    """Pixel metrics from a confusion matrix.

    Returns:
        ``mean_iou`` (mean over classes present in prediction or ground truth), ``iou_per_class``,
        ``dice`` (mean Dice of the foreground classes 1..K-1; with two classes, the foreground Dice),
        ``dice_per_class`` and ``pixel_accuracy``. A class absent from both gives ``None``.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    fg = dice[1:] if len(dice) > 1 else dice
    total = cm.sum()

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return {
        "mean_iou": clean(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "dice": clean(np.nanmean(fg)) if np.isfinite(fg).any() else None,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "iou_per_class": [clean(v) for v in iou],
        "dice_per_class": [clean(v) for v in dice],
    }


def metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, object]:
    """Pixel metrics of class-index arrays ``pred`` and ``gt`` of equal shape (see :func:`metrics_from_confusion`)."""
    return metrics_from_confusion(confusion(pred, gt, num_classes))
