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
from .models import available
from .preprocess import LabelMap, infer_axes
from .progress import Progress, Work
from .tasks import semantic

log = logging.getLogger(__name__)


def is_architecture(spec: str) -> bool:
    return spec in {s.name for s in available()}


def model_for_training(
    spec: str,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    rgb: bool | None = None,
    **build_kwargs: Any,
) -> SegModel:
    """The model ``train`` starts from.

    Args:
        spec: A registry name (a new, randomly initialised model whose classes are the sorted label
            values found in ``labels`` and whose channels follow the first image), or a trained
            model's path or stored name (fine-tuning: classes and channels are the model's own).
        build_kwargs: Builder arguments for a new model (e.g. ``base_filters=32``).
    """
    if is_architecture(spec):
        lmap = LabelMap.from_labels(list(labels))
        axes = infer_axes(np.shape(images[0]), rgb)
        return new_model(spec, label_values=lmap.values, in_channels=3 if axes.rgb else 1, **build_kwargs)
    from .store import resolve_trained

    if build_kwargs:
        raise ValueError(
            f"Builder arguments ({', '.join(build_kwargs)}) only apply to a new model; {spec!r} is a trained model "
            "whose architecture is fixed."
        )
    path = resolve_trained(spec)
    model = load_model(path)
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
        ``mean_iou``, ``dice``, ``pixel_accuracy``, ``iou_per_class``, ``dice_per_class``,
        ``class_values`` and ``images`` (the count).
    """
    lmap = LabelMap(model.card["label_values"])
    k = model.card["num_classes"]
    cm = np.zeros((k, k), np.int64)
    for i, (img, lab) in enumerate(zip(images, labels)):
        gen = predict(model, img, rgb=rgb, device=device, tile=tile, output="classes")
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                pred = stop.value
                break
            yield Progress(i, len(images), f"image {i + 1}/{len(images)}: {p.note}")
        if pred.shape != np.shape(lab):
            raise ValueError(f"Labels of image {i + 1} are {np.shape(lab)} but the image's prediction is {pred.shape}.")
        unknown = lmap.unknown_values(np.asarray(lab))
        if unknown:
            log.warning("Image %d: label values %s are not classes of the model; left out of the scores", i + 1, unknown[:10])
        cm += semantic.confusion(pred, lmap.to_classes(np.asarray(lab)), k)
    out = semantic.metrics_from_confusion(cm)
    out["class_values"] = model.card["label_values"]
    out["images"] = len(images)
    return out
