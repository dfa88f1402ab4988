"""One object from positive and negative seeds, inside a window: the local algorithms behind a click.

All functions take window crops ``(h, w)`` and seed lists of ``(y, x)`` in window coordinates, and
return a bool mask of the window. The same seeded watershed serves every source: the region the
object may take (the model's foreground, or the image's bright or dark side), the distance to the
region's edge as the landscape, the positive seeds as one marker and the negative seeds plus the
cores of the other objects as the competing marker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import find_boundaries, watershed

Seeds = Sequence[tuple[int, int]]
OBJECT, OTHER = 1, 2


def _disk_marks(shape: tuple[int, ...], seeds: Seeds, radius: int = 1) -> np.ndarray:
    out = np.zeros(shape, bool)
    for y, x in seeds:
        out[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = True
    return out


def _keep_seeded(mask: np.ndarray, pos: Seeds) -> np.ndarray:
    """The connected parts of ``mask`` that hold a positive seed."""
    comps, n = ndi.label(mask)
    if n <= 1:
        return mask
    keep = {int(comps[y, x]) for y, x in pos} - {0}
    return np.isin(comps, list(keep)) if keep else np.zeros_like(mask)


def seeded_split(region: np.ndarray, dist: np.ndarray, pos: Seeds, others: np.ndarray) -> np.ndarray:
    """The part of ``region`` the positive seeds win by seeded watershed on ``-dist`` against
    ``others`` (bool: negative seeds, other objects' cores); only parts holding a positive seed."""
    markers = np.zeros(region.shape, np.int32)
    markers[others & region] = OTHER
    markers[_disk_marks(region.shape, pos) & region] = OBJECT
    if not (markers == OBJECT).any():
        return np.zeros(region.shape, bool)
    ws = watershed(-dist, markers, mask=region)
    return _keep_seeded(ws == OBJECT, pos)


def from_maps(
    fg: np.ndarray,
    inst: np.ndarray,
    smooth: np.ndarray,
    pos: Seeds,
    neg: Seeds,
    size: float,
    threshold: float = 0.5,
) -> np.ndarray:
    """The object from a model's cached maps: one positive click and nothing else is the model's own
    object under it; otherwise a seeded watershed over the foreground, where the other objects' cores
    and the negative clicks compete, and the model's cuts between other objects stay cut.

    The clicks move this object's foreground threshold (from ``threshold``, the model's): a positive
    click where the foreground is weaker lowers it to take that pixel in, a negative click where it is
    stronger (but weaker than at every positive click) raises it to leave that pixel out. An object
    the model drew a little too large or too small shrinks or grows along its whole edge, as the
    model's map says, not in a blob around the click. A positive click where the model saw (almost)
    background adds the region of weaker foreground around it (or, failing that, the image's region);
    a negative click the threshold cannot leave out competes as a seed."""
    hit = {int(inst[y, x]) for y, x in pos} - {0}
    if len(pos) == 1 and not neg and hit:
        return inst == hit.pop()
    t = _click_threshold(fg, pos, neg, threshold)
    mine = np.isin(inst, list(hit)) if hit else np.zeros(inst.shape, bool)
    region = fg > t
    for y, x in pos:
        if region[y, x]:
            continue
        weak, _ = ndi.label(fg > WEAK)
        grown = (weak == weak[y, x]) if weak[y, x] else np.zeros_like(region)
        if grown.sum() < max(4.0, (size / 4) ** 2):
            grown = classical(smooth, [(y, x)], [], size) | _disk_marks(region.shape, [(y, x)], max(1, int(size / 8)))
        region |= grown
    cuts = find_boundaries(inst, mode="inner") & (inst > 0) & ~mine
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(region & ~cuts).astype(np.float32), 1.0)
    others = (inst > 0) & ~mine & (dist >= 2.0)
    others |= _disk_marks(region.shape, [(y, x) for y, x in neg if region[y, x]])
    return seeded_split(region, dist, pos, others)


#: Foreground below this counts as the model's background: clicks do not lower the threshold under it.
WEAK = 0.25
#: How far past a clicked pixel's foreground the threshold moves to take it in or leave it out.
CLICK_MARGIN = 0.02


def _click_threshold(fg: np.ndarray, pos: Seeds, neg: Seeds, threshold: float) -> float:
    """The object's foreground threshold after its clicks (see :func:`from_maps`)."""
    lo = min(float(fg[y, x]) for y, x in pos)
    t = threshold
    if WEAK < lo <= t:  # take the weakest positive pixel in
        t = lo - CLICK_MARGIN
    stronger = [v for y, x in neg if t < (v := float(fg[y, x])) < lo - CLICK_MARGIN]
    if stronger:  # leave out negative pixels that every positive one is stronger than
        t = min(max(stronger) + CLICK_MARGIN, lo - CLICK_MARGIN)
    return t


def _side(smooth: np.ndarray, pos: Seeds) -> np.ndarray:
    """The side of the window's Otsu threshold the first positive seed is on (bright or dark objects)."""
    try:
        t = float(threshold_otsu(smooth))
    except ValueError:  # a flat window
        t = float(smooth.mean())
    y, x = pos[0]
    return smooth > t if smooth[y, x] > t else smooth <= t


def classical(smooth: np.ndarray, pos: Seeds, neg: Seeds, size: float, h: float = 2.0) -> np.ndarray:
    """The object without a model: the side of the window's Otsu threshold the first click is on, its
    connected parts holding a positive click, split where touching objects meet (h-maxima of the
    distance to the edge seed the neighbours) and against the negative clicks, by seeded watershed."""
    if not pos:
        return np.zeros(smooth.shape, bool)
    side = _side(smooth, pos)
    region = _keep_seeded(side | _disk_marks(side.shape, pos), pos)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(region).astype(np.float32), 1.0)
    maxima, _ = ndi.label(h_maxima(dist, max(h, size / 12)) & region)
    basins = watershed(-dist, maxima, mask=region)
    mine = {int(basins[y, x]) for y, x in pos} - {0}
    others = (maxima > 0) & ~np.isin(basins, list(mine))
    others |= _disk_marks(region.shape, neg)
    return seeded_split(region, dist, pos, others)


def objects_in_box(smooth: np.ndarray, min_size: int = 10, h: float = 2.0) -> np.ndarray:
    """Objects (int32 ids) in a box without a model: the side of Otsu's threshold unlike the box's
    border (which is taken for background), split by distance-transform watershed."""
    try:
        t = float(threshold_otsu(smooth))
    except ValueError:
        return np.zeros(smooth.shape, np.int32)
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    fg = smooth <= t if np.median(border) > t else smooth > t
    fg = ndi.binary_opening(fg)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg).astype(np.float32), 1.0)
    maxima, _ = ndi.label(h_maxima(dist, h) & fg)
    ids = watershed(-dist, maxima, mask=fg)
    sizes = np.bincount(ids.ravel())
    small = sizes < min_size
    small[0] = False
    ids[small[ids]] = 0
    return ids.astype(np.int32)
