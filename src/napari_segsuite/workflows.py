"""The operations the CLI and the widgets share: pick the model to train, train and save it, evaluate.

Qt-free; both front ends call these same functions.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .card import rename_classes
from .evaluation import evaluate
from .model_files import SegModel, load_model
from .models import available, get_spec
from .plan import anisotropic_levels, builder_arg, voxel_size_from_objects
from .preprocess import infer_axes
from .progress import Work
from .tasks import UNANNOTATED, get_task
from .training import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

__all__ = ["UNANNOTATED", "evaluate", "is_architecture", "model_for_training", "set_ignore_value", "train_model"]


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
    voxel_size: Sequence[float] | None = None,
    ignore_value: int | None = None,
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
        voxel_size: ``(Z, Y, X)`` voxel size of the images: a new native 3D model with a ``depth`` and an
            ``xy_only_levels`` argument pools thick slices only in Y/X (:func:`~.plan.anisotropic_levels`)
            unless ``build_kwargs`` says otherwise; the card keeps the voxel size.
        ignore_value: A label value that is no class (e.g. 255 in VOC exports): left out of the
            classes, the loss and the metrics, and kept in the card. A fine-tuned model keeps its
            own unless one is given.
        build_kwargs: Builder arguments for a new model (e.g. ``base_filters=32``).
    """
    if sparse and ignore_value == UNANNOTATED:
        raise ValueError(
            f"With sparse labels {UNANNOTATED} means 'not annotated' already; the ignore value must be another."
        )
    if is_architecture(spec):
        arch = get_spec(spec)
        in_channels = 3 if infer_axes(np.shape(images[0]), rgb).rgb else 1
        build = dict(build_kwargs)
        ids = get_task(arch.kind).object_ids(labels, instances)
        if arch.spatial_dims == 3 and voxel_size is None and ids is not None:
            voxel_size = voxel_size_from_objects(ids)
            if voxel_size is not None:
                log.info("No voxel size given; the objects suggest slices %.1fx thicker than pixels", voxel_size[0])
        takes_levels = "xy_only_levels" in inspect.signature(arch.builder).parameters
        if arch.spatial_dims == 3 and voxel_size is not None and takes_levels:
            depth = builder_arg(arch.name, build, "depth", 0)
            build.setdefault("xy_only_levels", anisotropic_levels(voxel_size, int(depth)))
            build.setdefault("depth", depth)
        ignore = {} if ignore_value is None else {"ignore_value": ignore_value}  # a task may not take one
        model = get_task(arch.kind).new_model(
            arch,
            labels,
            in_channels=in_channels,
            sparse=sparse,
            instances=instances,
            things=things,
            build=build,
            **ignore,
        )
        if voxel_size is not None:
            model.card.voxel_size = [float(v) for v in voxel_size]
        return model
    from .store import resolve_trained

    if build_kwargs:
        raise ValueError(
            f"Builder arguments ({', '.join(build_kwargs)}) only apply to a new model; {spec!r} is a trained model "
            "whose architecture is fixed."
        )
    path = resolve_trained(spec)
    model = load_model(path)
    get_task(model.card.kind).prepare_finetune(model, sparse)
    set_ignore_value(model, ignore_value)
    model.card.parent = {"name": model.name, "path": str(path), "metrics": model.card.metrics}
    return model


def set_ignore_value(model: SegModel, value: int | None) -> None:
    """Declare ``value`` the model's ignore value (left out of loss and metrics); ``None`` keeps the card's.

    Raises:
        ValueError: the model has a class for ``value``.
    """
    if value is None:
        return
    if value in model.card.label_values:
        raise ValueError(
            f"Model {model.name!r} has a class for label value {value} (its values are {model.card.label_values}); "
            "it cannot be ignored. Train a new model with --ignore-value."
        )
    model.card.ignore_value = int(value)


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
    unlabelled: Sequence[np.ndarray] | None = None,
) -> Work[TrainResult]:
    """Pick the starting model, train it (checkpointing the best to ``out`` as it improves) and save it
    to ``out``: the whole of ``segsuite train`` and of the Fine-tune widget's *Train*. ``class_names``
    (label value -> name) names the new model's classes; ``unlabelled`` images serve self-supervised
    pre-training (``config.pretrain``)."""
    model = model_for_training(
        spec,
        images,
        labels,
        rgb=rgb,
        sparse=sparse,
        instances=instances,
        things=things,
        voxel_size=config.voxel_size,
        ignore_value=config.ignore_value,
        **(build or {}),
    )
    model.card.name = Path(out).name  # train() puts config.voxel_size into the card; else the model keeps its own
    if class_names:
        rename_classes(model.card, class_names)
    result = yield from train(
        model,
        images,
        labels,
        config,
        names=names,
        rgb=rgb,
        instances=instances,
        cancel=cancel,
        checkpoint=out,
        unlabelled=unlabelled,
    )
    return result  # train() saved it to ``out`` (rank 0 alone under torchrun)
