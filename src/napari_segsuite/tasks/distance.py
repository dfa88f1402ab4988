"""The distance map of instance map models: a fourth output beside background / interior / boundary.

Each object pixel's target is its distance to the nearest pixel outside the object (background or
another object), divided by the object's largest such distance: 1 on every object's centre line,
falling to 0 at its border, whatever the object's size (the object probability of StarDist,
Schmidt et al. 2018). A nucleus of 5 px and one of 30 px both get a clear peak, and two touching
nuclei get a valley of 0 between their peaks, so seeds taken where the predicted map is high
split touching objects and keep small ones, where the boundary class alone (a ring a pixel or
two wide) can erase a small object or bridge two touching ones.

Targets are kept as integers (``round(d * DIST_SCALE)``) in the second target channel, so crops,
flips, rotations and nearest-neighbour rescaling treat them as they treat the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import find_boundaries, watershed

from .base import IGNORE

#: Normalised distances are kept in the targets as integers of this scale.
DIST_SCALE = 1000


def normalised_distance(inst: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Per-object normalised distance to the object's edge, float32 in [0, 1] (0 on background).

    ``inst``: object ids ``(H, W)`` or ``(Z, Y, X)`` (0 background); ``spacing``: voxel size of a
    volume, so thick slices count as thick.
    """
    inst = np.asarray(inst)
    out = np.zeros(inst.shape, np.float32)
    if inst.max() <= 0:
        return out
    edge = find_boundaries(inst, mode="inner")  # object pixels beside another label
    core = (inst > 0) & ~edge
    sampling = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == inst.ndim else None
    d = ndi.distance_transform_edt(core, sampling=sampling) + (inst > 0)
    ids = inst.astype(np.int64)
    peak = ndi.maximum(d, ids, np.arange(int(ids.max()) + 1))
    peak = np.asarray(peak, np.float64)
    peak[0] = 1.0
    out[:] = d / np.maximum(peak[ids], 1e-6)
    out[ids <= 0] = 0.0
    return out


def distance_targets(known: np.ndarray, per_slice: bool, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Integer distance targets (``DIST_SCALE`` stands for 1) of object ids ``(S, H, W)`` (2D models: per slice)
    or a volume ``(Z, Y, X)`` (native 3D models, in physical units of ``spacing``)."""
    if per_slice:
        d = np.stack([normalised_distance(sl) for sl in known])
    else:
        d = normalised_distance(known, spacing)
    return np.rint(d * DIST_SCALE).astype(np.int64)


def distance_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the distance map's logit ``(N, *spatial)`` against integer targets
    (``IGNORE`` left out)."""
    valid = target != IGNORE
    if not valid.any():
        return logit.sum() * 0.0
    t = target.float() / DIST_SCALE
    return F.binary_cross_entropy_with_logits(logit.float()[valid], t[valid])


def split_by_distance(
    foreground: np.ndarray,
    dist: np.ndarray,
    seed_threshold: float | None = None,
    dist_h: float = 0.1,
    z_ratio: float = 1.0,
) -> tuple[np.ndarray, int]:
    """Objects of ``foreground`` split by a seeded watershed on the predicted distance map; each
    object grows from its seed down the map. Returns ``(ids, number of seeded objects)``
    (foreground pixels no seed reaches are 0).

    Seeds are the maxima of the lightly smoothed map that rise at least ``dist_h`` above the pass to
    any higher one (h-maxima): the normalised distance peaks near 1 in every object whatever its
    size and falls towards 0 where two touch, so a relative depth splits touching objects and
    keeps faint small ones alike, where one absolute level is either too high for the faint peaks
    or too low for the valleys. With ``seed_threshold`` (models calibrated before h-maxima seeding),
    a seed is each connected region where ``dist`` exceeds it instead. ``z_ratio``: slice thickness
    over pixel width of a volume (smoothing is thinner across thick slices).
    """
    if seed_threshold is not None:
        seeds, n = ndi.label((dist > seed_threshold) & foreground)
        return watershed(-dist, seeds, mask=foreground), n
    sigma: float | tuple[float, ...] = 1.0
    if dist.ndim == 3 and z_ratio > 1:
        sigma = (1.0 / z_ratio, 1.0, 1.0)
    smooth = ndi.gaussian_filter(dist.astype(np.float32), sigma)
    seeds, n = ndi.label(h_maxima(smooth, dist_h) & foreground)
    return watershed(-smooth, seeds, mask=foreground), n
