"""The task contract: everything the engine needs to know about semantic, instance or panoptic work.

The trainer, the inference engine, the workflows, the widgets and the CLI ask the model card's task
(:func:`napari_segsuite.tasks.get_task`) and never compare task names. A new task is one class
implementing :class:`Task` plus one :func:`~napari_segsuite.tasks.register_task` call.

Arrays: images are normalised ``(C, *spatial)`` float32; labels are the user's values; class
indices are ``0..K-1`` with ``IGNORE`` (-1) where nothing is known; object ids are ``1..N`` with 0
for no object and ``-1`` where nothing is known.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from ..card import ModelCard
    from ..model_files import SegModel
    from ..models.registry import ModelSpec

IGNORE = -1
#: The sparse-annotation rule: label value 0 means "not annotated" (ignored by the loss and the metrics).
UNANNOTATED = 0


@dataclass
class Segmentation:
    """A segmentation result.

    Attributes:
        semantic: Class per pixel (class indices inside the engine, the user's label values in what
            :func:`~napari_segsuite.inference.segment` returns), ``(Y, X)`` or ``(Z, Y, X)``.
        instances: Object ids 1..N, 0 elsewhere, int32, unique in the whole image or volume.
        features: Per object: ``index`` (the id), ``class`` and ``score``, in id order (a napari
            Labels layer's ``features`` table).
    """

    semantic: np.ndarray | None = None
    instances: np.ndarray | None = None
    features: dict[str, np.ndarray] | None = None

    @property
    def labels(self) -> np.ndarray:
        """The main result: class values where there are classes, else object ids."""
        main = self.semantic if self.semantic is not None else self.instances
        if main is None:
            raise ValueError("This segmentation holds no labels.")
        return main


def object_table(ids: np.ndarray, features: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One row per object of ``ids`` (a napari Labels layer's ``features``): ``index`` (the id),
    ``area`` (pixels or voxels), ``centroid-0``, ``centroid-1`` (, ``centroid-2``) in array
    coordinates, and the model's ``class`` and ``score`` per object where ``features`` has them
    (objects the model gave no row get class -1 and score NaN)."""
    from scipy import ndimage as ndi

    ids = np.asarray(ids)
    index = np.unique(ids)
    index = index[index > 0]
    table: dict[str, np.ndarray] = {"index": index.astype(np.int64)}
    table["area"] = np.bincount(ids.ravel(), minlength=int(index.max(initial=0)) + 1)[index].astype(np.int64)
    centres = np.asarray(ndi.center_of_mass(ids > 0, ids, index), np.float64).reshape(len(index), ids.ndim)
    for axis in range(ids.ndim):
        table[f"centroid-{axis}"] = centres[:, axis]
    if features is not None and "index" in features:
        row = {int(i): k for k, i in enumerate(np.asarray(features["index"]).tolist())}
        where = np.array([row.get(int(i), -1) for i in index], np.int64)
        for key, fill in (("class", -1), ("score", np.nan)):
            if key in features:
                col = np.asarray(features[key])
                vals = col[np.clip(where, 0, None)] if len(col) else np.full(len(index), fill)
                table[key] = np.where(where >= 0, vals, fill) if len(index) else col[:0]
    return table


@dataclass
class Targets:
    """What a task makes of one image's labels.

    Attributes:
        y: What :meth:`Task.loss` takes for this image, int64: ``(*spatial)`` classes, or
            ``(T, *spatial)`` for tasks with several target channels (ids + classes).
        classes: Class indices per pixel that the first ``K`` maps are scored against (validation
            loss, pixel and panoptic metrics), or ``None``.
        ids: Object ids per pixel (-1 unknown) for object metrics, or ``None``.
    """

    y: np.ndarray
    classes: np.ndarray | None = None
    ids: np.ndarray | None = None


class Metric(Protocol):
    """A metric accumulated over images: ``update`` once per image, then ``compute``."""

    def update(self, pred: Segmentation, truth: Targets) -> None: ...

    def compute(self) -> dict[str, Any]:
        """The task's metrics, with ``score`` (the one number that picks the best model)."""
        ...


class Task(ABC):
    """What a task means, independent of the model.

    Class attributes:
        name: The registry key models declare as their ``kind``.
        score_name: The name of the validation score shown to users (``"mean IoU"``).
        score_key: The key of that score in the metrics (``"mean_iou"``).
        takes_objects: The task trains on class labels *and* an object-id image (panoptic).
    """

    name: ClassVar[str]
    score_name: ClassVar[str]
    score_key: ClassVar[str]
    takes_objects: ClassVar[bool] = False
    #: What :meth:`postprocess` gives a map model: classes per pixel, object ids, or both (blockwise outputs).
    gives_classes: ClassVar[bool] = True
    gives_ids: ClassVar[bool] = False

    # --- models ------------------------------------------------------------------------------
    @abstractmethod
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
        """A new, randomly initialised model of ``spec`` whose classes fit the user's labels.

        ``ignore_value`` (passed only when set): a label value that is no class; its pixels are
        ``IGNORE`` in the targets (see :class:`~napari_segsuite.preprocess.LabelMap`) and it is kept
        in the card's ``ignore_value``."""

    def prepare_finetune(self, model: SegModel, sparse: bool) -> None:
        """Adapt a trained model's card before fine-tuning (e.g. switch to sparse labels), or refuse.

        Raises:
            ValueError: the model cannot be fine-tuned that way.
        """
        if sparse and model.card.unannotated_value != UNANNOTATED:
            model.card.unannotated_value = UNANNOTATED

    def object_ids(
        self, labels: Sequence[np.ndarray], instances: Sequence[np.ndarray] | None
    ) -> Sequence[np.ndarray] | None:
        """The object-id images among what the user gives for training (``None``: the task has none).
        The engine reads object shapes from them (e.g. to guess how thick a volume's slices are)."""
        return instances

    def output_channels(self, card: ModelCard) -> int:
        """How many maps a map model of this task outputs (``num_classes`` unless the task adds more)."""
        return card.num_classes

    # --- training ----------------------------------------------------------------------------
    @abstractmethod
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
        """Targets of one image from the user's labels (and object ids).

        Args:
            labels: ``(S, H, W)``: the slices of a 2D model's image(s) (S = 1 for a 2D image), or a
                native 3D model's ``(Z, Y, X)`` volume.
            instances: Object ids of the same shape, or ``None``.
            per_slice: Objects are 2D (a 2D model over slices) rather than 3D.
            name: The image's name, for messages.
            strict: Training: refuse label values the model has no class for, and read sparse labels
                by the training rule. ``False`` (evaluation against ground truth): ignore unknown
                values, and read object ids as plain ids.
        """

    @abstractmethod
    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, card: ModelCard) -> torch.Tensor:
        """Scalar training loss of a batch ``x`` ``(N, C, *spatial)`` with targets ``y`` (stacked
        :attr:`Targets.y`, after augmentation)."""

    # --- inference ---------------------------------------------------------------------------
    def activate(self, out: torch.Tensor, card: ModelCard) -> torch.Tensor:
        """Raw map-model output to maps that can be averaged across overlapping tiles (default: softmax)."""
        return out.float().softmax(1)

    def unmirror(self, maps: torch.Tensor, dims: tuple[int, ...], card: ModelCard) -> torch.Tensor:
        """Maps ``(N, M, *spatial)`` predicted on an input mirrored along tensor axes ``dims``, brought
        back to the unmirrored input (test-time augmentation). Default: mirror them back, which is right
        for maps that do not point anywhere (class probabilities); tasks with vector maps override it."""
        return maps.flip(dims)

    def untranspose(self, maps: torch.Tensor, card: ModelCard) -> torch.Tensor:
        """Maps ``(N, M, H, W)`` predicted on an input with Y and X swapped, brought back (test-time
        augmentation). Default: swap them back; tasks with vector maps override it."""
        return maps.transpose(-2, -1)

    @abstractmethod
    def postprocess(self, maps: np.ndarray, card: ModelCard) -> Segmentation:
        """A :class:`Segmentation` (class indices) from blended maps ``(M, *spatial)``."""

    def wants_calibration(self, card: ModelCard) -> bool:
        """Whether :meth:`calibrate` would tune anything for this card (default: no)."""
        return False

    def calibrate(self, maps: list[np.ndarray], truths: list[Targets], card: ModelCard) -> dict[str, Any]:
        """Tune post-processing on the validation images' maps after training (writing what it
        chose into ``card``); returns what changed. Default: nothing."""
        return {}

    # --- evaluation --------------------------------------------------------------------------
    @abstractmethod
    def metric(self, card: ModelCard) -> Metric:
        """A fresh metric accumulator for this task."""

    def report(self, metrics: dict[str, Any], card: ModelCard) -> dict[str, Any]:
        """Metrics as users read them (class indices turned into their label values); default unchanged."""
        return metrics

    def score_of(self, card: ModelCard) -> tuple[str, float] | None:
        """The validation score recorded in a card, e.g. ``("AP50", 0.83)``; ``None`` if untrained."""
        value = (card.metrics or {}).get(self.score_key)
        return (self.score_name, float(value)) if isinstance(value, (int, float)) else None


def check_known(model: SegModel, values: np.ndarray, name: str) -> None:
    """Refuse label values the model has no class for.

    Raises:
        ValueError: names the image, the values and the model's values.
    """
    from ..preprocess import LabelMap

    lmap = LabelMap.of_card(model.card)
    unknown = lmap.unknown_values(values)
    if unknown:
        raise ValueError(
            f"Labels of {name!r} hold values {unknown[:10]} that model {model.name!r} has no class for "
            f"(its label values are {lmap.values}). Train a new model, or relabel those pixels."
        )


def check_ids(labels: Sequence[np.ndarray | None], what: str = "Instance labels") -> None:
    """Refuse object-id images that are not integers."""
    for lab in labels:
        if lab is not None and not np.issubdtype(np.asarray(lab).dtype, np.integer):
            raise ValueError(f"{what} must be integer ids (0 background, 1..N objects).")
