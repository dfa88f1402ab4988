"""The operations the CLI and the widgets share: pick a model to train, evaluate a model.

Qt-free; both front ends call these same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .inference import predict
from .io import SegModel, load_model, new_model
from .models import available, get_spec
from .preprocess import LabelMap, infer_axes
from .progress import Progress, Work, map_progress
from .tasks import instance, semantic

log = logging.getLogger(__name__)

UNANNOTATED = 0  # the sparse-annotation rule: label value 0 = not annotated (ignored by the loss)


def is_architecture(spec: str) -> bool:
    return spec in {s.name for s in available()}


def model_for_training(
    spec: str,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    rgb: bool | None = None,
    sparse: bool = False,
    **build_kwargs: Any,
) -> SegModel:
    """The model ``train`` starts from.

    Args:
        spec: A registry name (a new, randomly initialised model whose classes are the sorted label
            values found in ``labels`` and whose channels follow the first image), or a trained
            model's path or stored name (fine-tuning: classes and channels are the model's own).
        sparse: Sparse annotation: label value 0 means "not annotated" and is ignored; every class,
            background included, is painted with its own value 1..K.
        build_kwargs: Builder arguments for a new model (e.g. ``base_filters=32``).
    """
    if is_architecture(spec) and get_spec(spec).kind == "instance":
        if sparse:
            raise ValueError("Sparse labels are not supported for instance models yet; give every object an id.")
        for lab in labels:
            if not np.issubdtype(np.asarray(lab).dtype, np.integer):
                raise ValueError("Instance labels must be integer ids (0 background, 1..N objects).")
        axes = infer_axes(np.shape(images[0]), rgb)
        return new_model(spec, label_values=[0, 1, 2], class_names=["background", "interior", "boundary"],
                         in_channels=3 if axes.rgb else 1, **build_kwargs)
    if is_architecture(spec):
        values = LabelMap.from_labels(list(labels)).values
        if sparse:
            values = [v for v in values if v != UNANNOTATED]
            if len(values) < 2:
                raise ValueError(
                    f"Sparse labels need at least two painted classes (0 = not annotated; paint the background "
                    f"as a class of its own, e.g. 1 background, 2 nucleus); found only {values or 'nothing'}."
                )
        axes = infer_axes(np.shape(images[0]), rgb)
        return new_model(spec, label_values=values, in_channels=3 if axes.rgb else 1,
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
        if UNANNOTATED in model.card["label_values"]:
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
    rgb: bool | None = None,
    device: str = "auto",
    tile: int = 512,
) -> Work[dict[str, Any]]:
    """Segment each image and score it against its labels (the user's values, mapped by the card).

    Label values the model has no class for are left out of the scores (and logged).

    Returns:
        Semantic models: ``mean_iou``, ``dice``, ``pixel_accuracy``, ``iou_per_class``,
        ``dice_per_class``, ``class_values`` and ``images`` (the count). Instance models: ``ap50``,
        ``ap50_95``, ``f1``, ``mean_matched_iou``, ``n_pred``, ``n_true`` and ``images`` (objects are
        matched one-to-one per image; counts are summed over images).
    """
    lmap = LabelMap.of_card(model.card)
    k = model.card["num_classes"]
    cm = np.zeros((k, k), np.int64)
    is_instance = model.card.get("kind") == "instance"
    ious, n_pred, n_true = [], 0, 0
    for i, (img, lab) in enumerate(zip(images, labels)):
        pred = yield from map_progress(
            predict(model, img, rgb=rgb, device=device, tile=tile, output="values" if is_instance else "classes"),
            lambda p, i=i: Progress(i, len(images), f"image {i + 1}/{len(images)}: {p.note}"),
        )
        if pred.shape != np.shape(lab):
            raise ValueError(f"Labels of image {i + 1} are {np.shape(lab)} but the image's prediction is {pred.shape}.")
        if is_instance:
            m = instance.metrics(pred, np.asarray(lab))
            ious.append(instance.match(pred, np.asarray(lab)))
            n_pred, n_true = n_pred + m["n_pred"], n_true + m["n_true"]
            continue
        unknown = lmap.unknown_values(np.asarray(lab))
        if unknown:
            log.warning("Image %d: label values %s are not classes of the model; left out of the scores", i + 1, unknown[:10])
        cm += semantic.confusion(pred, lmap.to_classes(np.asarray(lab)), k)
    if is_instance:
        res: dict[str, Any] = instance.metrics_from_matches(np.concatenate(ious) if ious else np.zeros(0), n_pred, n_true)
        res["images"] = len(images)
        return res
    out = semantic.metrics_from_confusion(cm)
    out["class_values"] = model.card["label_values"]
    out["images"] = len(images)
    return out
