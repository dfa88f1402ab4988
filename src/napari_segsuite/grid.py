"""The grid a native 3D semantic model trains and predicts on: the volume's own, or a coarser one when
its classes are told apart by where they lie rather than by how they look.

A brain atlas's cortical regions are all grey matter: only their place in the head tells them apart,
and a crop of 48 voxels at 1 mm (what a CPU step affords) sees too little of the head to know where it
is. On a real T1 brain (ten atlas regions, one hemisphere to the other, 400 steps of 2 x 48^3 crops)
a bare loop scored mean Dice 0.00 at 1 mm and 0.16-0.36 (two runs) on a 2 mm copy; the product 0.00
at 1 mm and 0.08-0.20 (five runs) on this grid, and 0.36 after 600 s (1147 steps) where it had 0.00. Tissue
classes that look different (grey and white matter, nuclei, membranes) keep the volume's grid and its
detail. The model's card keeps the factor (``downsample``); prediction averages the volume down by it,
and interpolates the class probabilities back up (:func:`~.inference.predict_maps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Two classes look alike when the histograms of their intensities (32 bins between the volume's 1st
#: and 99th percentiles) share at least this much. On real data: ten cortical atlas regions of a T1
#: brain 0.86-0.97 each; grey matter, white matter and the rest 0.01-0.07; ISBI membranes and cell
#: interiors 0.43; nuclei and background 0.38.
LOOK_ALIKE = 0.7
#: Classes are told apart by place when at least this share of them (and at least three classes)
#: have a look-alike.
PLACE_SHARE = 0.5
#: The coarser grid is used where the crop would span less than this share of the volume along an axis.
CROP_SHARE = 0.5
#: Most voxels per class sampled for its histogram.
MOST_VOXELS = 100_000


def look_alike_share(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], ignore: int | None = None) -> float:
    """The share of label values whose intensity histogram overlaps another's by :data:`LOOK_ALIKE`
    (the first channel of images with a channel axis after the labels' axes); 0 for fewer than three values."""
    rng = np.random.default_rng(0)
    values: dict[int, list[np.ndarray]] = {}
    for img, lab in zip(images, labels):
        x, lab = np.asarray(img, np.float32), np.asarray(lab)
        x = x[..., 0] if x.ndim > lab.ndim else x
        lo, hi = np.percentile(x[:: max(1, x.shape[0] // 16)], (1, 99))
        x = np.clip((x - lo) / (hi - lo + 1e-9), 0, 1)
        for v in np.unique(lab):
            if ignore is not None and v == ignore:
                continue
            where = np.flatnonzero(lab == v)
            if len(where) > MOST_VOXELS:
                where = where[rng.integers(0, len(where), MOST_VOXELS)]
            values.setdefault(int(v), []).append(x.ravel()[where])
    if len(values) < 3:
        return 0.0
    hists = []
    for parts in values.values():
        h = np.histogram(np.concatenate(parts), bins=32, range=(0, 1))[0].astype(np.float64)
        hists.append(h / max(h.sum(), 1))
    alike = [
        max(np.minimum(h, g).sum() for j, g in enumerate(hists) if j != i) >= LOOK_ALIKE for i, h in enumerate(hists)
    ]
    return float(np.mean(alike))


def told_apart_by_place(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], ignore: int | None = None) -> bool:
    """Whether the classes are told apart by where they lie (:func:`look_alike_share` at least
    :data:`PLACE_SHARE`): then a fixed orientation is kept in training (a brain's regions) where a
    file has one; classes that look different (tissue, nuclei) gain from every mirroring and rotation
    whatever the file (real T1 brain, grey/white matter, 600 s: Dice 0.942 with them, 0.919 with
    left-right mirroring only)."""
    return look_alike_share(images, labels, ignore) >= PLACE_SHARE


def choose_downsample(
    card: Any, shapes: Sequence[tuple[int, ...]], crop: tuple[int, ...], ratio: float, by_place: Callable[[], bool]
) -> int:
    """The factor (1 or 2) by which a new native 3D semantic model of ``card`` trains on volumes of
    spatial ``shapes`` whose full-grid crop is ``crop``: 2 where the classes are told apart by place
    (``by_place``: :func:`told_apart_by_place` on the training data, asked last, as it reads every
    voxel), the crop spans under :data:`CROP_SHARE` of the volume along an axis, and the voxels are
    about isotropic (``ratio``: Z spacing over Y/X spacing, under 1.5)."""
    from .tasks import get_task

    task = get_task(card.kind)  # class maps alone: interpolated back, they are the answer
    if card.spatial_dims != 3 or task.gives_ids or not task.gives_classes or ratio >= 1.5:
        return 1
    small = any(c < CROP_SHARE * max(sh[a] for sh in shapes) for a, c in enumerate(crop))
    return 2 if small and by_place() else 1


def coarse_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """The spatial shape of a volume on a grid ``factor`` times coarser."""
    return tuple(max(1, int(n) // factor) for n in shape)


def downsample_volume(x: np.ndarray, factor: int, *, labels: bool = False, channels_last: bool = False) -> np.ndarray:
    """A ``(Z, Y, X)`` volume (``(Z, Y, X, C)`` with ``channels_last``; ``(C, Z, Y, X)`` otherwise when
    4D) on a grid ``factor`` times coarser: intensities averaged over each cell, labels taken at its
    nearest voxel."""
    if factor == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))
    if channels_last and t.ndim == 4:
        t = t.movedim(-1, 0)
    lead = t.ndim == 4
    t = t if lead else t[None]
    size = coarse_shape(t.shape[1:], factor)
    if labels:
        out = F.interpolate(t[None].double(), size=size, mode="nearest-exact")[0].to(t.dtype)
    else:
        out = F.interpolate(t[None].float(), size=size, mode="area")[0]
    out = out if lead else out[0]
    if channels_last and lead:
        out = out.movedim(0, -1)
    return out.numpy()


def upsample_maps(maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``(C, z, y, x)`` class maps interpolated (trilinearly) to the spatial ``shape``."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    return F.interpolate(t[None], size=tuple(shape), mode="trilinear", align_corners=False)[0].numpy()
