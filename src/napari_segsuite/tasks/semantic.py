"""Semantic segmentation: one class per pixel.

Targets are int64 class indices ``(N, H, W)`` with ``IGNORE`` (-1) where a pixel carries no label
(padding, or values the model does not know); the loss skips those pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from . import register_task
from .base import IGNORE, UNANNOTATED, Segmentation, Targets, Task, check_known

if TYPE_CHECKING:
    from ..card import ModelCard
    from ..model_files import SegModel
    from ..models.registry import ModelSpec

log = logging.getLogger(__name__)


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


def postprocess(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class index per pixel from ``(K, ...)`` probabilities: argmax over the first axis, or, for two
    classes with a ``threshold``, class 1 where its probability reaches the threshold."""
    if threshold is not None and probs.shape[0] == 2:
        return (probs[1] >= threshold).astype(np.int64)
    return argmax0(probs)


def argmax0(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(axis=0)`` (the first of equal maxima), class by class: numpy's reduction across the
    first axis of a ``(K, H, W)`` array strides through memory (1.8x as long for two classes on
    1440 x 1440, 1.3x for five)."""
    if probs.shape[0] == 1:
        return np.zeros(probs.shape[1:], np.int64)
    best = probs[0].copy()
    idx = np.zeros(probs.shape[1:], np.int64)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        np.copyto(idx, k, where=better)
        np.maximum(best, probs[k], out=best)  # a NaN anywhere stays NaN in ``best``
    if np.isnan(best).any():  # numpy's rule there (the first NaN wins)
        return probs.argmax(axis=0)
    return idx


#: Decision thresholds tried by :func:`calibrate_threshold` (two-class models).
THRESHOLDS = np.round(np.arange(0.2, 0.81, 0.05), 2)


def calibrate_threshold(maps: list[np.ndarray], truths: list[np.ndarray], min_gain: float = 0.002) -> float | None:
    """The class-1 probability threshold that maximises mean IoU over validation images, or ``None``
    when none beats the argmax (0.5) by ``min_gain``.

    Args:
        maps: ``(2, ...)`` probabilities per image.
        truths: Class indices per image (``IGNORE`` skipped).
    """

    def miou(t: float) -> float:
        cm = sum(
            (confusion((m[1] >= t).astype(np.int64), y, 2) for m, y in zip(maps, truths)), np.zeros((2, 2), np.int64)
        )
        value = metrics_from_confusion(cm)["mean_iou"]
        return float(value) if isinstance(value, float) else 0.0

    scores = {float(t): miou(float(t)) for t in THRESHOLDS}
    best = max(scores, key=lambda t: scores[t])
    return best if scores[best] > scores[0.5] + min_gain else None


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

    def clean(v: Any) -> float | None:
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


class ConfusionMetric:
    """Pixel metrics accumulated over images in one confusion matrix (see :func:`metrics_from_confusion`)."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: Segmentation, truth: Targets) -> None:
        if pred.semantic is None or truth.classes is None:
            raise ValueError("A pixel metric needs predicted and true classes.")
        self.cm += confusion(pred.semantic, truth.classes, self.k)

    def compute(self) -> dict[str, Any]:
        out = metrics_from_confusion(self.cm)
        out["score"] = out["mean_iou"] or 0.0
        return out


def label_values_for(labels: Sequence[np.ndarray], sparse: bool, ignore: int | None = None) -> list[int]:
    """The class values of a new model from the user's labels (without 0 when labels are sparse,
    without the ``ignore`` value).

    Raises:
        ValueError: sparse labels with fewer than two painted classes.
    """
    from ..preprocess import LabelMap

    values = LabelMap.from_labels(list(labels), ignore=ignore).values
    if sparse:
        values = [v for v in values if v != UNANNOTATED]
        if len(values) < 2:
            raise ValueError(
                f"Sparse labels need at least two painted classes (0 = not annotated; paint the background "
                f"as a class of its own, e.g. 1 background, 2 nucleus); found only {values or 'nothing'}."
            )
    return values


class SemanticTask(Task):
    """One class per pixel: targets are class indices, maps are class probabilities."""

    name = "semantic"
    score_name = "mean IoU"
    score_key = "mean_iou"

    def new_model(
        self,
        spec: ModelSpec,
        labels: Sequence[np.ndarray],
        *,
        in_channels: int,
        sparse: bool,
        instances: Sequence[np.ndarray] | None,
        things: Sequence[int] | None,
        build: dict[str, Any],
        ignore_value: int | None = None,
    ) -> SegModel:
        from ..model_files import new_model

        return new_model(
            spec.name,
            label_values=label_values_for(labels, sparse, ignore_value),
            in_channels=in_channels,
            unannotated_value=UNANNOTATED if sparse else None,
            ignore_value=ignore_value,
            **build,
        )

    def prepare_finetune(self, model: SegModel, sparse: bool) -> None:
        if sparse and model.card.unannotated_value != UNANNOTATED and UNANNOTATED in model.card.label_values:
            raise ValueError(
                f"Model {model.name!r} has a class for label value 0, so 0 cannot mean 'not annotated' here. "
                "Fine-tune it with dense labels, or train a new model with sparse labels."
            )
        super().prepare_finetune(model, sparse)

    def targets(
        self,
        model: SegModel,
        labels: np.ndarray,
        instances: np.ndarray | None,
        *,
        per_slice: bool,
        name: str,
        strict: bool = True,
    ) -> Targets:
        cls = classes_of(model, labels, name, strict)
        return Targets(y=cls, classes=cls)

    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, card: ModelCard) -> torch.Tensor:
        return loss_fn(module(x), y)

    def postprocess(self, maps: np.ndarray, card: ModelCard) -> Segmentation:
        return Segmentation(semantic=postprocess(maps, card.threshold))

    def wants_calibration(self, card: ModelCard) -> bool:
        return card.num_classes == 2

    def calibrate(self, maps: list[np.ndarray], truths: list[Targets], card: ModelCard) -> dict[str, Any]:
        """Two-class models: the decision threshold that does best on the validation images."""
        if card.num_classes != 2:
            return {}
        ys = [t.classes for t in truths if t.classes is not None]
        card.threshold = calibrate_threshold(maps, ys) if len(ys) == len(maps) else None
        return {"threshold": card.threshold}

    def metric(self, card: ModelCard) -> ConfusionMetric:
        return ConfusionMetric(card.num_classes)

    def report(self, metrics: dict[str, Any], card: ModelCard) -> dict[str, Any]:
        return {**metrics, "class_values": list(card.label_values)}


def classes_of(model: SegModel, labels: np.ndarray, name: str, strict: bool) -> np.ndarray:
    """Class indices of the user's label values (``IGNORE`` where unknown or not annotated).

    Raises:
        ValueError: with ``strict``, values the model has no class for (else they are logged and ignored).
    """
    from ..preprocess import LabelMap

    if strict:
        check_known(model, labels, name)
    else:
        unknown = LabelMap.of_card(model.card).unknown_values(labels)
        if unknown:
            log.warning("%s: label values %s are not classes of the model; left out of the scores", name, unknown[:10])
    return LabelMap.of_card(model.card).to_classes(labels)


register_task(SemanticTask())
