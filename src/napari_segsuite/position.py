"""Position channels: where each pixel or voxel lies in its image, given to a model as inputs beside the
intensities, for classes told apart by place (:func:`~.grid.told_apart_by_place`: a brain atlas's
cortical regions are all grey matter; only where they lie tells them apart).

A crop (48 voxels at 1 mm, what a CPU step affords) sees too little of a head to know where it is;
with its place given, a network need only learn what each region's place and its local anatomy say.
Per spatial axis, the place ``c`` from -1 at the image's first edge to 1 at its last, then its
sines and cosines at a few frequencies (:data:`FREQUENCIES`; as in the Fourier features of NeRF and
Tancik et al. 2020: a network learns sharp functions of its place far more easily from them than from
``c`` alone). Along an axis the images may be mirrored along (``card.mirror_axes``: left-right in a
brain) ``c`` is the distance from the middle, 0 to 1, which mirroring leaves true (and so its sines
and cosines): a mirrored crop shows what its mirror image would, and the place of the mirrored voxel
lies as far from the middle. Only models of a fixed orientation read their place (images turned by 90
degrees would swap the channels' meanings).

Samples carry the channels from :func:`~.samples.prepare_samples` on, so a slab held out for
validation, a crop, a coarser grid or a Y/X mirroring keep each voxel's place in the whole image;
intensity augmentation leaves them alone (:func:`~.augment.crop_batch`); prediction adds them to the
whole normalised image (:func:`~.inference.predict_maps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Besides the place itself, its sines and cosines at these frequencies (half-cycles across the image)
#: for new models: they let a network draw boundaries that turn within a few centimetres of a head.
#: Real T1 brain, ten atlas regions, one hemisphere to the other, 600 s, seed 0: mean Dice 0.356
#: without the place, 0.443 with the place alone, 0.547 with frequencies 1, 2, 4, 0.599 with 1, 2, 4, 8.
#: The card keeps the model's own (``position_frequencies``).
FREQUENCIES: tuple[int, ...] = (1, 2, 4, 8)


def per_axis(frequencies: list[int] | tuple[int, ...]) -> int:
    """Position channels per spatial axis: the place, and a sine and a cosine per frequency."""
    return 1 + 2 * len(frequencies)


def input_channels(card: Any) -> int:
    """The channels ``card``'s network takes: the image's, and its position channels where it reads its place."""
    if not getattr(card, "position", False):
        return int(card.in_channels)
    return int(card.in_channels) + int(card.spatial_dims) * per_axis(card.position_frequencies)


def position_channels(
    shape: tuple[int, ...],
    mirror_axes: list[int] | tuple[int, ...] | None = (),
    frequencies: list[int] | tuple[int, ...] = (),
) -> np.ndarray:
    """``(len(shape) * per_axis(frequencies), *shape)`` float32: per spatial axis, the place ``c``
    along it from -1 to 1 (pixel centres), or along ``mirror_axes`` its distance from the middle, 0
    to 1; then ``sin(pi f c)`` and ``cos(pi f c)`` for each of ``frequencies``."""
    k = per_axis(frequencies)
    out = np.empty((len(shape) * k, *shape), np.float32)
    mirrored = set(mirror_axes or ())
    for a, n in enumerate(shape):
        c = (2 * np.arange(n) + 1 - n) / n  # exactly symmetric about the middle
        if a in mirrored:
            c = np.abs(c)
        feats = [c] + [f(np.pi * q * c) for q in frequencies for f in (np.sin, np.cos)]
        for j, v in enumerate(feats):
            out[a * k + j] = v.astype(np.float32).reshape([n if b == a else 1 for b in range(len(shape))])
    return out


def with_position(x: np.ndarray, card: Any) -> np.ndarray:
    """A normalised ``(C, *spatial)`` image with its position channels appended where ``card``'s model
    reads them and ``x`` has none yet (it has the image's channels only)."""
    if not getattr(card, "position", False) or x.shape[0] != card.in_channels:
        return x
    where = position_channels(tuple(x.shape[1:]), card.mirror_axes, card.position_frequencies)
    return np.concatenate([np.asarray(x, np.float32), where], axis=0)


def choose_position(card: Any, by_place: Callable[[], bool]) -> bool:
    """Whether a new model of ``card`` reads its place: semantic models of a fixed orientation
    (``card.mirror_axes`` set) whose classes are told apart by place (``by_place``, asked last)."""
    from .tasks import get_task

    task = get_task(card.kind)
    if task.gives_ids or not task.gives_classes or card.mirror_axes is None:
        return False
    return bool(by_place())
