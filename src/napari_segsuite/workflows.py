"""The operations the CLI and the widgets share: pick a model to train, evaluate a model.

Qt-free; both front ends call these same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .inference import segment
from .io import SegModel, load_model, new_model
from .models import available, get_spec
from .preprocess import LabelMap, infer_axes
from .progress import Progress, Work, map_progress
from .tasks import instance, semantic

log = logging.getLogger(__name__)

UNANNOTATED = 0  # the sparse-annotation rule: label value 0 = not annotated (ignored by the loss)


def is_architecture(spec: str) -> bool:
    return spec in {s.name for s in available()}


def _check_ids(labels: Sequence[np.ndarray], what: str = "Instance labels") -> None:
    for lab in labels:
        if lab is not None and not np.issubdtype(np.asarray(lab).dtype, np.integer):
            raise ValueError(f"{what} must be integer ids (0 background, 1..N objects).")


def model_for_training(
    spec: str,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    rgb: bool | None = None,
    sparse: bool = False,
    instances: Sequence[np.ndarray] | None = None,
    things: Sequence[int] | None = None,
    **build_kwargs: Any,
) -> SegModel:
    """The model ``train`` starts from.

    Args:
        spec: A registry name (a new, randomly initialised model whose classes are the sorted label
            values found in ``labels`` and whose channels follow the first image), or a trained
            model's path or stored name (fine-tuning: classes and channels are the model's own).
        labels: Semantic models: class values. Instance models: object ids (one class), or class
            values when ``instances`` holds the ids (a class per object; object models only).
            Panoptic models: class values.
        sparse: Sparse annotation: label value 0 means "not annotated" and is ignored; every class,
            background included, is painted with its own value 1..K. For instance models: 0 not
            annotated, 1 background, 2, 3, ... one id per object.
        instances: Object ids per image (instance models with classes; panoptic models).
        things: Panoptic models: the label values of the countable classes (the rest are stuff);
            default: the classes found under objects in ``instances``, else every class but 0.
        build_kwargs: Builder arguments for a new model (e.g. ``base_filters=32``).
    """
    arch = get_spec(spec) if is_architecture(spec) else None
    in_channels = 3 if infer_axes(np.shape(images[0]), rgb).rgb else 1
    if arch is not None and arch.kind == "panoptic" and sparse:
        raise ValueError("Sparse labels are not supported for panoptic models yet; label whole images.")
    if arch is not None and arch.kind == "instance":
        _check_ids(labels if instances is None else instances)
        if not arch.objects:
            if instances is not None:
                raise ValueError(
                    f"{spec!r} finds objects of one class; for a class per object pick an object model "
                    f"({', '.join(s.name for s in available('instance') if s.objects)})."
                )
            return new_model(spec, label_values=[0, 1, 2], class_names=["background", "interior", "boundary"],
                             in_channels=in_channels, unannotated_value=UNANNOTATED if sparse else None,
                             **build_kwargs)
        if instances is None:
            return new_model(spec, label_values=[0, 1], class_names=["background", "object"],
                             in_channels=in_channels, unannotated_value=UNANNOTATED if sparse else None,
                             **build_kwargs)
        if sparse:
            raise ValueError("Sparse labels with a class per object are not supported yet; label whole images.")
        values = sorted(set(LabelMap.from_labels(list(labels)).values) | {0})
        return new_model(spec, label_values=values, in_channels=in_channels, **build_kwargs)
    if arch is not None and arch.kind == "panoptic":
        lmap = LabelMap.from_labels(list(labels))
        if instances is not None:
            _check_ids(instances)
        if things is None:  # the classes found under objects; without objects every class but 0
            found: set[int] = set()
            for lab, inst in zip(labels, instances or [None] * len(labels)):
                if inst is not None:
                    found |= {int(v) for v in np.unique(np.asarray(lab)[np.asarray(inst) > 0])}
            things = sorted(found - {0}) or [v for v in lmap.values if v != 0]
            log.info("Thing classes (label values): %s; the others are stuff", things)
        missing = sorted(set(things) - set(lmap.values))
        if missing:
            raise ValueError(f"Thing classes {missing} do not occur in the labels (values {lmap.values}).")
        thing_idx = tuple(lmap.values.index(v) for v in things)
        return new_model(spec, label_values=lmap.values, in_channels=in_channels,
                         **{"thing_classes": thing_idx, **build_kwargs})
    if arch is not None:
        values = LabelMap.from_labels(list(labels)).values
        if sparse:
            values = [v for v in values if v != UNANNOTATED]
            if len(values) < 2:
                raise ValueError(
                    f"Sparse labels need at least two painted classes (0 = not annotated; paint the background "
                    f"as a class of its own, e.g. 1 background, 2 nucleus); found only {values or 'nothing'}."
                )
        return new_model(spec, label_values=values, in_channels=in_channels,
                         unannotated_value=UNANNOTATED if sparse else None, **build_kwargs)
    from .store import resolve_trained

    if build_kwargs:
        raise ValueError(
            f"Builder arguments ({', '.join(build_kwargs)}) only apply to a new model; {spec!r} is a trained model "
            "whose architecture is fixed."
        )
    path = resolve_trained(spec)
    model = load_model(path)
    if sparse and model.card.get("unannotated_value") != UNANNOTATED:
        if model.card.get("kind") == "panoptic":
            raise ValueError("Sparse labels are not supported for panoptic models yet.")
        if model.card.get("kind") == "semantic" and UNANNOTATED in model.card["label_values"]:
            raise ValueError(
                f"Model {model.name!r} has a class for label value 0, so 0 cannot mean 'not annotated' here. "
                "Fine-tune it with dense labels, or train a new model with sparse labels."
            )
        model.card["unannotated_value"] = UNANNOTATED
    model.card["parent"] = {"name": model.name, "path": str(path), "metrics": model.card.get("metrics")}
    return model


def evaluate(
    model: SegModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    instances: Sequence[np.ndarray] | None = None,
    rgb: bool | None = None,
    device: str = "auto",
    tile: int = 512,
) -> Work[dict[str, Any]]:
    """Segment each image and score it against its labels (the user's values, mapped by the card).

    ``labels`` and ``instances`` mean what they mean for :func:`model_for_training`. Label values
    the model has no class for are left out of the scores (and logged).

    Returns:
        Semantic models: ``mean_iou``, ``dice``, ``pixel_accuracy``, ``iou_per_class``,
        ``dice_per_class``, ``class_values`` and ``images`` (the count). Instance models: ``ap50``,
        ``ap50_95``, ``f1``, ``mean_matched_iou``, ``n_pred``, ``n_true`` and ``images`` (objects are
        matched one-to-one per image, whatever their class; counts are summed over images).
        Panoptic models: ``pq``, ``sq``, ``rq``, ``pq_per_class`` (by label value), ``pq_things``,
        ``pq_stuff`` and ``images``.
    """
    lmap = LabelMap.of_card(model.card)
    k = model.card["num_classes"]
    cm = np.zeros((k, k), np.int64)
    kind = model.card.get("kind")
    ious, n_pred, n_true = [], 0, 0
    counts = None
    for i, (img, lab) in enumerate(zip(images, labels)):
        seg = yield from map_progress(
            segment(model, img, rgb=rgb, device=device, tile=tile),
            lambda p, i=i: Progress(i, len(images), f"image {i + 1}/{len(images)}: {p.note}"),
        )
        lab = np.asarray(lab)
        if seg.labels.shape != lab.shape:
            raise ValueError(f"Labels of image {i + 1} are {lab.shape} but the image's prediction is {seg.labels.shape}.")
        if kind == "instance":
            gt = lab if instances is None else np.asarray(instances[i])
            m = instance.metrics(seg.instances, gt)
            ious.append(instance.match(seg.instances, gt))
            n_pred, n_true = n_pred + m["n_pred"], n_true + m["n_true"]
            continue
        unknown = lmap.unknown_values(lab)
        if unknown:
            log.warning("Image %d: label values %s are not classes of the model; left out of the scores", i + 1, unknown[:10])
        gt_cls = lmap.to_classes(lab)
        pred_cls = lmap.to_classes(seg.semantic)
        if kind == "panoptic":
            from .tasks import panoptic

            things = tuple(model.card["build"].get("thing_classes", (1,)))
            gt_ids = np.asarray(instances[i]) if instances is not None else panoptic.objects_of_things(gt_cls, things)
            c = panoptic.pq_counts(pred_cls, seg.instances, gt_cls, gt_ids, things, k)
            counts = c if counts is None else counts + c
            continue
        cm += semantic.confusion(pred_cls, gt_cls, k)
    if kind == "instance":
        res: dict[str, Any] = instance.metrics_from_matches(np.concatenate(ious) if ious else np.zeros(0), n_pred, n_true)
        res["images"] = len(images)
        return res
    if kind == "panoptic":
        from .tasks import panoptic

        res = panoptic.pq_from_counts(counts, model.card["build"].get("thing_classes", (1,)))
        values = model.card["label_values"]
        for key in ("pq_per_class", "sq_per_class", "rq_per_class"):  # by the user's label values
            res[key] = {int(values[c]): v for c, v in res[key].items()}
        res["images"] = len(images)
        return res
    out = semantic.metrics_from_confusion(cm)
    out["class_values"] = model.card["label_values"]
    out["images"] = len(images)
    return out
