"""Scoring a model: the one metric loop, used by validation during training and by ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .checks import check_tile
from .inference import predict_maps, segment, segment_slice
from .model_files import SegModel
from .models.base import ObjectModel
from .preprocess import LabelMap
from .progress import Progress, Work, drive, map_progress
from .samples import Sample, check_shapes
from .tasks import IGNORE, Segmentation, get_task


def nll(maps: np.ndarray, classes: np.ndarray | None, k: int) -> float | None:
    """Mean negative log-likelihood of the first ``k`` maps (probabilities) at the known true classes."""
    if classes is None:
        return None
    valid = classes != IGNORE
    if not valid.any():
        return None
    p = np.clip(maps[:k][:, valid], 1e-7, 1.0)
    return float(-np.log(p[classes[valid], np.arange(int(valid.sum()))]).mean())


def sample_maps(
    model: SegModel,
    samples: list[Sample],
    device: torch.device,
    amp: bool,
    tile: int | tuple[int, ...] = 512,
    tta: bool = False,
) -> list[np.ndarray] | None:
    """The task's blended maps of each sample (``None`` for object models, which have no maps)."""
    if isinstance(model.module, ObjectModel):
        return None
    was_training = model.module.training
    model.module.eval()
    maps = [drive(predict_maps(model, s.x, tile=tile, device=device, amp=amp, tta=tta)) for s in samples]
    model.module.train(was_training)
    return maps


def evaluate_samples(
    model: SegModel,
    samples: list[Sample],
    device: torch.device,
    amp: bool,
    tile: int | tuple[int, ...] = 512,
    maps: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Validation loss and the task's metrics of ``model`` over whole samples (tiled, as at inference).

    Returns:
        The task's metrics with ``score`` (mean IoU, AP50, PQ, ...) and ``loss`` (NaN for object
        models, whose loss needs training mode).
    """
    module, card = model.module, model.card
    task = get_task(card.kind)
    was_training = module.training
    module.eval()
    metric = task.metric(card)
    losses: list[float] = []
    for i, s in enumerate(samples):
        if isinstance(module, ObjectModel):
            seg = drive(segment_slice(model, s.x, tile=tile, device=device, amp=amp))
        else:
            m = maps[i] if maps is not None else drive(predict_maps(model, s.x, tile=tile, device=device, amp=amp))
            loss = nll(m, s.truth.classes, card.num_classes)
            if loss is not None:
                losses.append(loss)
            seg = task.postprocess(m, card)
        metric.update(seg, s.truth)
    module.train(was_training)
    out = metric.compute()
    out["loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


#: Test-time augmentation (the image and its three mirrorings, for 2D models each also with Y and X
#: swapped, averaged: :func:`~.inference.predict_maps`) is kept unless it scores
#: worse than this on the validation images: it rarely loses, and a small validation set cannot tell
#: a small gain from noise. Four real-nuclei models, held-out half of the image: AP50 +0.017, +0.048,
#: 0.000 and +0.046 with it (the last one's validation slab had scored it 0.012 worse: one nucleus);
#: ISBI membranes after 120 steps: mean IoU +0.003 (these with the mirrorings alone). It costs four
#: passes (eight for 2D models).
TTA_MAX_LOSS = 0.03
#: ... and, where the score counts objects, unless it loses by more than this many objects' worth (this
#: many over the true objects): one object found by one way and missed by the other moves AP50 by about
#: two objects' worth. A real-nuclei model (1100 steps): the validation slab and the training part
#: scored TTA 0.033 worse (85 objects: one more missed, one more false), the held-out half 0.016 better
#: (another, seed 1: 0.022 worse there, kept either way, and 0.066 worse held out: a choice on so few
#: objects is mostly noise either way).
TTA_MARGIN_OBJECTS = 3.0


def calibrate_inference(
    model: SegModel,
    samples: list[Sample],
    device: torch.device,
    amp: bool,
    tile: int | tuple[int, ...] = 512,
    also: Sequence[Sample] = (),
) -> dict[str, Any] | None:
    """After training: choose how the model segments, on held-out ``samples``, and write it into its card.

    For map models, both ways of predicting (as is, and with test-time augmentation) are tried with
    the task's post-processing tuned on each (:meth:`~.tasks.Task.calibrate`: a threshold, watershed
    settings) on ``samples``; test-time augmentation is kept unless it loses by more than
    :data:`TTA_MAX_LOSS` (and :data:`TTA_MARGIN_OBJECTS` objects' worth) on ``samples`` and ``also``:
    samples that help choose it but are not scored (the training images, where the validation set is
    one slab of one image: :func:`calibration_helpers`).

    Returns:
        The metrics of the chosen way on ``samples`` (as :func:`evaluate_samples`), or ``None`` for
        object models.
    """
    card = model.card
    task = get_task(card.kind)
    if isinstance(model.module, ObjectModel):
        return None
    chooser = list(samples) + list(also)
    truths = [s.truth for s in chooser]
    tried: dict[bool, tuple[float, Any, dict[str, Any], list[np.ndarray]]] = {}  # tta -> score, card, metrics, maps
    for tta in (False, True):
        maps = sample_maps(model, chooser, device, amp, tile, tta=tta)
        assert maps is not None
        trial = card.model_copy(deep=True)
        if task.wants_calibration(trial):  # on the held-out samples alone: the helpers were trained on
            task.calibrate(maps[: len(samples)], truths[: len(samples)], trial)
        metrics = evaluate_samples(SegModel(model.module, trial), chooser, device, amp, tile, maps=maps)
        tried[tta] = (float(metrics["score"]), trial, metrics, maps)
    plain_score, tta_score = tried[False][0], tried[True][0]
    n_true = tried[False][2].get("n_true")
    margin = max(TTA_MAX_LOSS, TTA_MARGIN_OBJECTS / n_true) if n_true else TTA_MAX_LOSS
    use_tta = tta_score >= plain_score - margin
    _, chosen, metrics, maps = tried[use_tta]
    card.threshold, card.postprocessing, card.tta = chosen.threshold, dict(chosen.postprocessing), use_tta
    if also:  # the scores of the held-out samples alone (their maps are the first of the chooser's)
        metrics = evaluate_samples(model, list(samples), device, amp, tile, maps=maps[: len(samples)])
    metrics["tta_gain"] = tta_score - plain_score
    return metrics


def calibration_helpers(val: list[Sample], train: list[Sample], images: int) -> list[Sample]:
    """Training samples that join the validation ones in :func:`calibrate_inference`'s choice of
    test-time augmentation: the training part of the image where the validation set is a slab of the
    one image trained on (``images == 1``: on real nuclei, the slab alone dropped it once at a cost
    of 0.046 held-out AP50); none otherwise (whole validation images choose alone: the model has not
    seen them, and no extra inference). They do not choose the post-processing: the model has fitted
    them (real nuclei, 300 s: a mask threshold of 0.7 chosen with them scored 0.855 held-out AP50,
    the defaults kept on the slab alone 0.933; without weight averaging's plain mean the same choice
    had scored -0.03 to +0.02)."""
    return list(train[:1]) if images == 1 and len(val) == 1 and len(train) == 1 else []


def evaluate(
    model: SegModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    instances: Sequence[np.ndarray] | None = None,
    rgb: bool | None = None,
    device: str = "auto",
    tile: int = 512,
    names: Sequence[str] | None = None,
    tta: bool | None = None,
) -> Work[dict[str, Any]]:
    """Segment each image as a user would and score it against its labels (the user's values).

    ``labels`` and ``instances`` mean what they mean for training (:meth:`~.tasks.Task.targets`).
    Label values the model has no class for are left out of the scores (and logged). ``names`` (the
    files') name the images in error messages. ``tta``: test-time augmentation (``None``: as the card says).

    Returns:
        The task's metrics as users read them (:meth:`~.tasks.Task.report`; semantic: ``mean_iou``,
        ``dice``, ...; instance: ``ap50``, ...; panoptic: ``pq``, ...) and ``images`` (the count).
    """
    card = model.card
    task = get_task(card.kind)
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    check_tile(tile)
    check_shapes(images, labels, instances, names, rgb)
    lmap = LabelMap(card.label_values)
    metric = task.metric(card)
    for i, (img, lab) in enumerate(zip(images, labels)):

        def note(p: Progress, i: int = i) -> Progress:
            return Progress(i, len(images), f"image {i + 1}/{len(images)}: {p.note}")

        seg = yield from map_progress(segment(model, img, rgb=rgb, device=device, tile=tile, tta=tta), note)
        truth = task.targets(
            model,
            np.asarray(lab),
            None if instances is None else np.asarray(instances[i]),
            per_slice=False,
            name=names[i],
            strict=False,
        )
        if seg.semantic is not None:  # back to class indices, as the metric counts them
            seg = Segmentation(lmap.to_classes(seg.semantic), seg.instances, seg.features)
        metric.update(seg, truth)
    out = task.report(metric.compute(), card)
    out.pop("score", None)
    out["images"] = len(images)
    return out
