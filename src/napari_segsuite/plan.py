"""The training plan: crop, batch, epoch length and learning rate, chosen from the data and the model
before the first step (shown to the user and written into the card)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .card import ModelCard
from .model_files import SegModel
from .samples import Sample

if TYPE_CHECKING:
    from .training import TrainConfig


@dataclass
class TrainPlan:
    """What training will do, chosen from the data and the model before the first step (shown to
    the user and written into the card).

    Attributes:
        patch: Crop shape, ``(Y, X)`` or ``(Z, Y, X)``.
        batch_size: Crops per step.
        steps_per_epoch: Optimiser steps between validations.
        lr: Peak learning rate.
        val_tile: Tile of the validation's sliding window.
    """

    patch: tuple[int, ...]
    batch_size: int
    steps_per_epoch: int
    lr: float
    val_tile: int | tuple[int, ...]

    def describe(self) -> str:
        return (
            f"{self.batch_size} crops of {'x'.join(map(str, self.patch))} per step, "
            f"{self.steps_per_epoch} steps per epoch, learning rate {self.lr:g}"
        )


#: Voxels per optimiser step a native 3D model gets by default on a CPU (about 1-3 s a step on two
#: cores for a 16-filter 3D UNet) and on a GPU.
VOXELS_PER_STEP = {"cpu": 2**18, "gpu": 2**22}


def anisotropic_levels(voxel_size: Sequence[float] | None, depth: int) -> int:
    """How many of a 3D UNet's first ``depth`` poolings should leave Z alone for this voxel size:
    Z is pooled only once the pooled Y/X spacing has come within a factor 2 of the Z spacing (so
    every level sees features of about the same physical extent in each axis)."""
    if voxel_size is None or len(voxel_size) != 3:
        return 0
    sz, sxy = float(voxel_size[0]), float(min(voxel_size[1:]))
    levels = 0
    while levels < depth and sz > 2 * sxy:
        sxy *= 2
        levels += 1
    return levels


def plan(model: SegModel, train_samples: Sequence[Sample], cfg: TrainConfig, device: str = "cpu") -> TrainPlan:
    """The crop, batch, epoch length and learning rate for ``model`` on ``train_samples``
    (:func:`plan_for` on the samples' spatial shapes)."""
    return plan_for(model.card, [s.x.shape[1:] for s in train_samples], cfg, device)


def plan_for(card: ModelCard, shapes: Sequence[tuple[int, ...]], cfg: TrainConfig, device: str = "cpu") -> TrainPlan:
    """The plan for a model of ``card`` on training images of spatial ``shapes`` (``(Y, X)`` per 2D
    sample, ``(Z, Y, X)`` per volume of a native 3D model): what a front end shows before training.

    Native 3D models get a crop whose Z depth follows the voxel size (about the same physical extent
    as in Y/X, so thick slices give thin crops) and whose voxels fit :data:`VOXELS_PER_STEP`, so a
    CPU step takes seconds, not a minute; the crop never exceeds the volume.
    """
    div = max(1, card.divisible_by)
    spec_training = _training_defaults(card)
    peak_lr = float(cfg.lr or spec_training.get("lr", 2e-3))
    if card.spatial_dims == 3:
        return _plan_3d(card, shapes, cfg, spec_training, peak_lr, device)
    patch_size = cfg.patch_size or spec_training.get("patch_size", 256)
    p = min(patch_size, max(max(sh[-2:]) for sh in shapes))
    p = max(div, -(-p // div) * div)
    patch: tuple[int, ...] = (p, p)
    batch_size = max(2, cfg.batch_size)  # batch norm in pooling branches (PSPNet, DeepLab) needs two samples
    return TrainPlan(patch, batch_size, _steps_per_epoch(cfg, shapes, patch, batch_size), peak_lr, 512)


def _plan_3d(
    card: ModelCard,
    shapes: Sequence[tuple[int, ...]],
    cfg: TrainConfig,
    spec_training: dict[str, Any],
    peak_lr: float,
    device: str,
) -> TrainPlan:
    voxel = cfg.voxel_size or card.voxel_size
    ratio = float(voxel[0]) / float(min(voxel[1:])) if voxel is not None and len(voxel) == 3 else 1.0
    levels = int(builder_arg(card.architecture, card.build, "depth", 4))
    xy_only = int(builder_arg(card.architecture, card.build, "xy_only_levels", 0))
    mult_xy, mult_z = 2**levels, 2 ** max(0, levels - xy_only)
    depth_max = max(sh[0] for sh in shapes)
    side_max = max(max(sh[-2:]) for sh in shapes)
    budget = VOXELS_PER_STEP["gpu" if device not in ("cpu", "mps") else "cpu"]
    batch_size = 2  # batch norm needs two samples
    p = cfg.patch_size or spec_training.get("patch_size") or 128
    p = min(p, _round_up(side_max, mult_xy))
    while True:
        pz = cfg.patch_size_z or max(mult_z, 8, round(p / ratio))
        pz = min(_round_up(pz, mult_z), _round_up(depth_max, mult_z))
        if cfg.patch_size or batch_size * pz * p * p <= budget or p <= 2 * mult_xy:
            break
        p = max(2 * mult_xy, _round_up(int(p * 0.85), mult_xy) - mult_xy)
    patch = (pz, p, p)
    if not cfg.patch_size and not cfg.patch_size_z:
        batch_size = int(np.clip(budget // (pz * p * p), 2, max(2, cfg.batch_size)))
    val_tile = (min(_round_up(depth_max, mult_z), max(2 * pz, 16)), max(p, 128), max(p, 128))
    return TrainPlan(patch, batch_size, _steps_per_epoch(cfg, shapes, patch, batch_size), peak_lr, val_tile)


def preview(base: str, shapes: Sequence[tuple[int, ...]], cfg: TrainConfig, device: str = "cpu") -> TrainPlan:
    """The plan training would choose for ``base`` (an architecture name or a trained model's folder)
    on images of spatial ``shapes``, without building the model or reading the images: about four
    fifths of the images train (the rest validate), so the epoch length is approximate."""
    from .model_files import read_card
    from .models import get_spec

    try:
        spec = get_spec(base)
        card = ModelCard(
            name="preview",
            architecture=spec.name,
            kind=spec.kind,
            num_classes=2,
            label_values=[0, 1],
            class_names=["a", "b"],
            divisible_by=spec.divisible_by,
            spatial_dims=spec.spatial_dims,
            build=dict(spec.defaults),
        )
    except KeyError:
        card = read_card(base)
    if card.spatial_dims == 2:  # volumes train slice by slice
        shapes = [sl for sh in shapes for sl in ([sh[-2:]] * (sh[0] if len(sh) == 3 else 1))]
    keep = max(1, round(len(shapes) * (1 - cfg.val_fraction))) if len(shapes) > 1 else 1
    return plan_for(card, shapes[:keep], cfg, device)


def _round_up(n: int, m: int) -> int:
    return max(m, -(-int(n) // m) * m)


def _steps_per_epoch(cfg: TrainConfig, shapes: Sequence[tuple[int, ...]], patch: tuple[int, ...], batch: int) -> int:
    train_px = sum(int(np.prod([max(n, c) for n, c in zip(sh[-len(patch) :], patch)])) for sh in shapes)
    return cfg.steps_per_epoch or int(np.clip(math.ceil(train_px / (batch * np.prod(patch))), 10, 100))


def _training_defaults(card: ModelCard) -> dict[str, Any]:
    """The registry's training defaults of the card's architecture (e.g. a smaller crop for object models)."""
    from .models import get_spec

    try:
        return dict(get_spec(card.architecture).training)
    except KeyError:
        return {}


def builder_arg(architecture: str, build: dict[str, Any], name: str, default: Any) -> Any:
    """A builder argument of a model: ``build``'s own, else the registry's default of ``architecture``,
    else the builder's signature default, else ``default``."""
    if name in build:
        return build[name]
    import inspect

    from .models import get_spec

    try:
        spec = get_spec(architecture)
    except KeyError:
        return default
    if name in spec.defaults:
        return spec.defaults[name]
    param = inspect.signature(spec.builder).parameters.get(name)
    return default if param is None or param.default is inspect.Parameter.empty else param.default


def voxel_size_from_objects(volumes: Sequence[np.ndarray], most: int = 300) -> tuple[float, float, float] | None:
    """A guess at the relative voxel size ``(Z, 1, 1)`` of volumes of object ids whose file gave none.

    Objects such as nuclei are about as deep as they are wide, so where their extent in Z is
    consistently smaller than in Y/X the slices are that much thicker than the pixels. ``None`` when
    there are too few objects (< 5) or the ratio is under 1.5 (treated as isotropic).
    """
    from scipy import ndimage as ndi

    ratios: list[float] = []
    for vol in volumes:
        vol = np.asarray(vol)
        if vol.ndim != 3 or not np.issubdtype(vol.dtype, np.integer):
            continue
        for box in ndi.find_objects(vol):
            if box is None:
                continue
            dz, dy, dx = (s.stop - s.start for s in box)
            touches = box[0].start == 0 or box[0].stop == vol.shape[0]  # cut by the volume's ends
            if not touches and min(dy, dx) >= 3:
                ratios.append((dy + dx) / 2 / dz)
            if len(ratios) >= most:
                break
    if len(ratios) < 5:
        return None
    r = float(np.median(ratios))
    return (round(r * 2) / 2, 1.0, 1.0) if r >= 1.5 else None
