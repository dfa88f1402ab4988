"""How a model sees its training images, settled before training from the data and the settings:
its orientation (the axes crops are mirrored along: ``card.mirror_axes``), its grid (``card.downsample``,
:mod:`.grid`) and whether it reads its place (``card.position``, :mod:`.position`). All three follow
whether the classes are told apart by place (:func:`~.grid.told_apart_by_place`), read once per
training, and only where asked. A model trained before (being fine-tuned) keeps its own grid and place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .grid import choose_downsample, told_apart_by_place
from .model_files import SegModel, fresh_module
from .position import FREQUENCIES, choose_position
from .train_config import TrainConfig


def settle_geometry(
    model: SegModel, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: TrainConfig, device: str
) -> int:
    """Set ``model``'s orientation and place (rebuilding a new model's network where its input channels
    change) and return the factor of the grid it trains on.

    Raises:
        ValueError: mirror axes that are no axes of the model; a place read without a fixed orientation;
            a coarser grid for a 2D model.
    """
    card = model.card
    by_place = functools.cache(partial(told_apart_by_place, images, labels, card.ignore_value))
    if cfg.mirror_axes is not None:
        if any(not -card.spatial_dims <= a < card.spatial_dims for a in cfg.mirror_axes):
            raise ValueError(
                f"Nothing was trained: mirror axes {list(cfg.mirror_axes)} are not axes of a {card.spatial_dims}D model."
            )
        # a model that reads its place keeps the axes its place is folded along (position.py)
        if not card.position and (card.mirror_axes is not None or by_place()):
            card.mirror_axes = sorted({int(a) % card.spatial_dims for a in cfg.mirror_axes})
    if not (card.parent or card.training):
        want = choose_position(card, by_place) if cfg.position is None else cfg.position
        if want and card.mirror_axes is None:
            raise ValueError(
                "Nothing was trained: a model reads its place only in images of a fixed orientation "
                "(give the mirror axes, e.g. left-right in a brain MRI)."
            )
        if want != card.position:
            card.position = want
            card.position_frequencies = list(FREQUENCIES) if want else []
            model.module = fresh_module(card)
    return _grid(model, labels, cfg, device, by_place)


def _grid(
    model: SegModel, labels: Sequence[np.ndarray], cfg: TrainConfig, device: str, by_place: Callable[[], bool]
) -> int:
    """How many times coarser than the volumes' own the grid ``model`` trains on is (:mod:`.grid`): a
    model trained before (being fine-tuned) keeps its own, ``cfg.downsample`` where given, else the data's choice."""
    from .plan import plan_for

    card = model.card
    if card.parent or card.training:
        return card.downsample
    if cfg.downsample is not None:
        if cfg.downsample > 1 and card.spatial_dims != 3:
            raise ValueError(
                f"Nothing was trained: a coarser grid (downsample {cfg.downsample}) is for native 3D models."
            )
        return cfg.downsample
    shapes = [tuple(np.shape(lab)) for lab in labels]
    if card.spatial_dims != 3 or any(len(sh) != 3 for sh in shapes):
        return 1
    voxel = cfg.voxel_size or card.voxel_size
    ratio = float(voxel[0]) / float(min(voxel[1:])) if voxel is not None and len(voxel) == 3 else 1.0
    crop = plan_for(card, shapes, cfg, device).patch
    return choose_downsample(card, shapes, crop, ratio, by_place)


def describe_geometry(card: Any, factor: int) -> str:
    """One sentence on the orientation, grid and place chosen for ``card`` (empty where all are the defaults)."""
    parts = []
    if card.mirror_axes is not None:
        axes = "ZYX"[-card.spatial_dims :]
        parts.append(f"mirrored along {', '.join(axes[a] for a in card.mirror_axes) or 'no axis'} only")
    if factor > 1:
        parts.append(f"on a {factor}x coarser grid")
    if card.position:
        parts.append("reading where each voxel lies")
    return "training " + ", ".join(parts) if parts else ""


def whole_input_only(card: Any) -> str:
    """Why a model of ``card`` must be given the whole image or volume, as it is (a phrase after its
    name), or ``""``: it reads each voxel's place in the whole image (:mod:`.position`), or sees the
    volume averaged down to a coarser grid (:mod:`.grid`). Blocks and exported networks cannot."""
    if card.position:
        return "reads where each voxel lies in the whole image"
    if card.downsample > 1:
        return f"sees volumes on a {card.downsample}x coarser grid"
    return ""
