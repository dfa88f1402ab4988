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
from .samples import Sample, pad_to

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


def plan(model: SegModel, train_samples: Sequence[Sample], cfg: TrainConfig) -> TrainPlan:
    """The crop, batch, epoch length and learning rate for ``model`` on ``train_samples``."""
    card = model.card
    div = max(1, card.divisible_by)
    spec_training = _training_defaults(card)
    patch_size = cfg.patch_size or spec_training.get("patch_size", 256)
    peak_lr = cfg.lr or spec_training.get("lr", 2e-3)
    p = min(patch_size, max(max(s.x.shape[-2:]) for s in train_samples))
    p = max(div, -(-p // div) * div)
    patch: tuple[int, ...] = (p, p)
    batch_size = max(2, cfg.batch_size)  # batch norm in pooling branches (PSPNet, DeepLab) needs two samples
    val_tile: int | tuple[int, ...] = 512
    if card.spatial_dims == 3:
        pz_cfg = cfg.patch_size_z or spec_training.get("patch_size_z", 32)
        pz = min(pz_cfg, max(s.x.shape[1] for s in train_samples))
        patch, batch_size, val_tile = (pz, p, p), max(2, cfg.batch_size // 2), (2 * pz_cfg, 256, 256)
    train_px = sum(pad_to(s, patch).y.size for s in train_samples)
    spe = cfg.steps_per_epoch or int(np.clip(math.ceil(train_px / (batch_size * np.prod(patch))), 10, 100))
    return TrainPlan(patch, batch_size, spe, float(peak_lr), val_tile)


def _training_defaults(card: ModelCard) -> dict[str, Any]:
    """The registry's training defaults of the card's architecture (e.g. a smaller crop for object models)."""
    from .models import get_spec

    try:
        return dict(get_spec(card.architecture).training)
    except KeyError:
        return {}
