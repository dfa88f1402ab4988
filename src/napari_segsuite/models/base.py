"""The two shapes a model can have.

A **map model** is any ``nn.Module`` mapping ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) to dense maps
``(N, M, H, W)``: class logits for semantic models and ``unet-instance``, class logits plus centre
and offset maps for Panoptic-DeepLab. What the maps mean (targets, loss, how they blend across
tiles, how they become labels) is the task's business (:mod:`napari_segsuite.tasks`), not the model's.

An :class:`ObjectModel` (Mask R-CNN, SOLO, DeepMask) outputs a *set of objects* per image and
computes its own loss (its targets are matched to its proposals inside the model). The engine runs
:meth:`ObjectModel.detect` tile by tile and stitches the objects.

Targets of object models (and of the panoptic task) are ``y`` of shape ``(N, 2, H, W)`` int64, after cropping and augmentation:

- ``y[:, 0]``: object ids (0 where there is no object, ``-1`` where nothing is known: padding and
  unannotated pixels). Ids are unique within one image, not necessarily consecutive; an object cut
  by the crop border is simply smaller.
- ``y[:, 1]``: class index per pixel (0 background, 1..K-1 the classes; ``-1`` unknown). For an
  instance model every pixel of one object carries that object's class.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

IGNORE = -1


class Detections(TypedDict):
    """Objects found in one image (tensors on any device).

    masks: ``(n, H, W)`` bool, the image's size. scores: ``(n,)`` float in 0..1. classes: ``(n,)``
    int64 class indices 1..K-1 (0 is background and never returned).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


class ObjectModel(nn.Module):
    """A model whose output is a set of objects rather than per-pixel maps."""

    #: Objects larger than this (pixels, along Y or X) may be cut when images are tiled; the engine
    #: makes tile overlaps at least this wide.
    max_object_size: int = 128

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a batch ``x`` ``(N, C, H, W)`` (normalised) with targets ``y``
        ``(N, 2, H, W)`` as described in this module; the module is in train mode."""
        raise NotImplementedError

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.5) -> list[Detections]:
        """Objects in each image of ``x`` ``(N, C, H, W)`` (module in eval mode), highest score first.
        Overlaps between returned masks are allowed; the engine resolves them."""
        raise NotImplementedError


ENCODER_NAMES = ("encoder", "encoders", "backbone", "trunk")


def encoder_of(module: nn.Module) -> nn.Module | None:
    """The model's encoder (feature extractor), for freezing while fine-tuning: the shallowest
    submodule named ``encoder``, ``encoders``, ``backbone`` or ``trunk``; ``None`` if there is none."""
    found = [
        (name.count("."), name, m)
        for name, m in module.named_modules()
        if name and name.rsplit(".", 1)[-1] in ENCODER_NAMES
    ]
    return min(found, key=lambda t: (t[0], t[1]))[2] if found else None
