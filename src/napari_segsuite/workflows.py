"""The operations the CLI and the widgets share: pick the model to train, train and save it, evaluate.

Qt-free; both front ends call these same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .card import rename_classes
from .evaluation import evaluate
from .model_files import SegModel, load_model, save_model
from .models import available, get_spec
from .preprocess import infer_axes
from .progress import Work
from .tasks import UNANNOTATED, get_task
from .training import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

__all__ = ["UNANNOTATED", "evaluate", "is_architecture", "model_for_training", "train_model"]


def is_architecture(spec: str) -> bool:
    return spec in {s.name for s in available()}


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
        spec: A registry name (a new, randomly initialised model whose classes the task derives from
            ``labels`` and whose channels follow the first image), or a trained model's path or
            stored name (fine-tuning: classes and channels are the model's own).
        labels: What the model's task takes (:meth:`~.tasks.Task.targets`): class values for
            semantic and panoptic models; object ids (one class), or class values when
            ``instances`` holds the ids (a class per object; object models only), for instance models.
        sparse: Sparse annotation: label value 0 means "not annotated" and is ignored; every class,
            background included, is painted with its own value 1..K. For instance models: 0 not
            annotated, 1 background, 2, 3, ... one id per object.
        instances: Object ids per image (instance models with classes; panoptic models).
        things: Panoptic models: the label values of the countable classes (the rest are stuff);
            default: the classes found under objects in ``instances``, else every class but 0.
        build_kwargs: Builder arguments for a new model (e.g. ``base_filters=32``).
    """
    if is_architecture(spec):
        arch = get_spec(spec)
        in_channels = 3 if infer_axes(np.shape(images[0]), rgb).rgb else 1
        return get_task(arch.kind).new_model(
            arch, labels, in_channels=in_channels, sparse=sparse, instances=instances, things=things, build=build_kwargs
        )
    from .store import resolve_trained

    if build_kwargs:
        raise ValueError(
            f"Builder arguments ({', '.join(build_kwargs)}) only apply to a new model; {spec!r} is a trained model "
            "whose architecture is fixed."
        )
    path = resolve_trained(spec)
    model = load_model(path)
    get_task(model.card.kind).prepare_finetune(model, sparse)
    model.card.parent = {"name": model.name, "path": str(path), "metrics": model.card.metrics}
    return model


def train_model(
    spec: str,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig,
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    rgb: bool | None = None,
    sparse: bool = False,
    instances: Sequence[np.ndarray] | None = None,
    things: Sequence[int] | None = None,
    build: dict[str, Any] | None = None,
    class_names: dict[int, str] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Work[TrainResult]:
    """Pick the starting model, train it (checkpointing the best to ``out`` as it improves) and save it
    to ``out``: the whole of ``segsuite train`` and of the Fine-tune widget's *Train*. ``class_names``
    (label value -> name) names the new model's classes."""
    model = model_for_training(
        spec, images, labels, rgb=rgb, sparse=sparse, instances=instances, things=things, **(build or {})
    )
    model.card.name = Path(out).name
    if class_names:
        rename_classes(model.card, class_names)
    result = yield from train(
        model, images, labels, config, names=names, rgb=rgb, instances=instances, cancel=cancel, checkpoint=out
    )
    save_model(result.model, out)
    return result
