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

from .smoothing import smooth_correction
from .windows import around, near_points

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


def seeded_split(
    region: np.ndarray, dist: np.ndarray, pos: Seeds, others: np.ndarray, compactness: float = 0.0
) -> np.ndarray:
    """The part of ``region`` the positive seeds win by seeded watershed on ``-dist`` against
    ``others`` (bool: negative seeds, other objects' cores); only parts holding a positive seed."""
    markers = np.zeros(region.shape, np.int32)
    markers[others & region] = OTHER
    markers[_disk_marks(region.shape, pos) & region] = OBJECT
    if not (markers == OBJECT).any():
        return np.zeros(region.shape, bool)
    ws = watershed(-dist, markers, mask=region, compactness=compactness)
    return _keep_seeded(ws == OBJECT, pos)


def from_maps(
    fg: np.ndarray,
    inst: np.ndarray,
    smooth: np.ndarray,
    pos: Seeds,
    neg: Seeds,
    size: float,
    threshold: float = 0.5,
    outline: float | None = None,
) -> np.ndarray:
    """The object from a model's cached maps: one positive click and nothing else is the model's own
    object under it, outlined where its foreground exceeds ``outline`` (default ``threshold``);
    otherwise a seeded watershed over the foreground, where the other objects' cores and the
    negative clicks compete, and the model's cuts between other objects stay cut.

    The clicks move this object's foreground threshold (from ``outline``): a positive click where
    the foreground is weaker lowers it to take that pixel in, a negative click where it is stronger
    (but weaker than at every positive click) raises it to leave that pixel out. An object the model
    drew a little too large or too small shrinks or grows along its whole edge, as the model's map
    says, not in a blob around the click. A positive click where the model saw (almost) background
    adds the region of weaker foreground around it (or, failing that, the image's region); a
    negative click the threshold cannot leave out competes as a seed."""
    line = threshold if outline is None else outline
    hit = {int(inst[y, x]) for y, x in pos} - {0}
    if len(pos) == 1 and not neg and hit:
        own = inst == hit.pop()
        tight = _keep_seeded(own & (fg > line), pos)
        return tight if tight.any() else own
    t = _click_threshold(fg, pos, neg, line)
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
    return seeded_split(region, dist, pos, others, COMPACT)


#: Compactness of the seeded watershed that parts an object from its neighbours and negative clicks:
#: a click need not be at the top of the distance landscape (off an object's centre, or in one half
#: of two nuclei the model merged) for its side to get its share (without it, the seed on the higher
#: ground took nearly all of a merged pair).
COMPACT = 0.5


#: Foreground below this counts as the model's background: clicks do not lower the threshold under it.
WEAK = 0.25
#: How far past a clicked pixel's foreground the threshold moves to take it in or leave it out.
CLICK_MARGIN = 0.02
#: A click this deep (pixels from the object's edge) or deeper in a wrong part is no edge correction:
#: the object is made again from the model's maps and all the clicks (a merge, a split, a missed part).
EDGE_DEPTH = 2.5
#: An edge correction reaches this many times the click's depth along the edge, and at most
#: :data:`EDGE_SPAN` pixels further than the click's depth (a deep click is a lump, not a long thin
#: ring: reaching 5 times its depth along the edge took a band of right pixels with it, and made the
#: object worse after 45% of negative clicks on the training half of real nuclei, 14% with a span of 2;
#: with :data:`GUARD` a span of 4 took fewer clicks, 3 and 5 more) ...
EDGE_REACH = 5.0
EDGE_SPAN = 4.0
#: ... over pixels whose foreground is within this of the clicked pixel's.
EDGE_LIKE = 0.2
#: A threshold move is taken for an edge correction only where it changes at most this many times
#: the pixels the local correction would (a ring the click speaks for, not the whole edge).
RING_AREA = 4.0
#: An edge correction leaves the pixels this near (pixels) an earlier click of the other sign as that
#: click set them: a correction does not undo the click before it (negative and positive clicks
#: swung a small object back and forth; with :data:`EDGE_SPAN` 4, noc90 on the training half of real
#: nuclei 5.32 -> 4.51, mean of three U-Nets; radius 1 and 2 within 0.04).
GUARD = 1.5
#: Corrections scale with the object: an edge correction reaches at most this many times the square
#: root of the object's area along the edge, and a threshold move changes at most
#: :data:`RING_SHARE` of the object (on a tiny nucleus a click's ring or its 4-pixel reach was a
#: third of the object, and clicks swung its IoU between 0.4 and 0.8; noc90 on the training half of
#: real nuclei 4.45/4.55/3.93 -> 4.37/4.20/3.83 for three U-Nets; 0.25 and 0.35 took more clicks).
REACH_SIZE = 0.3
RING_SHARE = 0.2

Click = tuple[int, int, bool]


def refine(
    fg: np.ndarray,
    inst: np.ndarray,
    smooth: np.ndarray,
    clicks: Sequence[Click],
    size: float,
    threshold: float = 0.5,
    outline: float | None = None,
    start: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, float]:
    """The object from a model's maps and its clicks ``(y, x, positive)`` in the order they came:
    each click corrects the object as it stood. A click that lands already right changes nothing; a
    click deep in a wrong part (:data:`EDGE_DEPTH`) makes the object again from all the clicks so far
    (:func:`from_maps`: a missed neighbour merged, a merged one split off); a click near the edge
    corrects the edge (:func:`edge_fix`). Returns the mask and its foreground threshold.

    Args:
        start: The mask and threshold after all the clicks but the last (as this returned them):
            only the last click is applied to it.
    """
    line = threshold if outline is None else outline
    mask, first = np.zeros(fg.shape, bool), 0
    if start is not None and clicks:
        (mask, line), first = start, len(clicks) - 1
    for k in range(first, len(clicks)):
        y, x, positive = clicks[k]
        if k and mask[y, x] == positive:
            continue
        if k and _depth(~mask if positive else mask, y, x, not positive) <= EDGE_DEPTH:
            guard = [c[:2] for c in clicks[:k] if c[2] != positive]
            mask, line = edge_fix(mask, fg, (y, x), positive, line, [c[:2] for c in clicks[:k] if c[2]], guard)
            continue
        pos = [(cy, cx) for cy, cx, p in clicks[: k + 1] if p]
        neg = [(cy, cx) for cy, cx, p in clicks[: k + 1] if not p]
        if k == 0 and positive and inst[y, x]:  # the outline is relative to the object's peak
            line *= float(fg[inst == inst[y, x]].max())
        if pos and k and not positive:  # deep in a wrong part (a merged neighbour): split the object as it is
            land = ndi.gaussian_filter(ndi.distance_transform_edt(mask).astype(np.float32), 1.0)
            mask = seeded_split(mask, land, pos, _disk_marks(mask.shape, neg), COMPACT)
            continue
        if pos:
            made = _from_maps_coarse(fg, inst, smooth, pos, neg, size, threshold, line)
            mask = made if not k else _monotone(mask, made, (y, x), positive)
    return mask, line


def _monotone(before: np.ndarray, made: np.ndarray, at: tuple[int, int], positive: bool) -> np.ndarray:
    """A correcting click's change one way only: a positive click adds, a negative one takes away;
    the clicked pixel ends up on its side."""
    out = before | made if positive else before & made
    out[at] = positive
    return out


#: A rebuild over more pixels than this works on every n-th pixel (the outline stays at full resolution).
REBUILD_PIXELS = 60_000


def _from_maps_coarse(
    fg: np.ndarray,
    inst: np.ndarray,
    smooth: np.ndarray,
    pos: Seeds,
    neg: Seeds,
    size: float,
    threshold: float,
    line: float,
) -> np.ndarray:
    """:func:`from_maps`, on every n-th pixel of a large window (a click's cost stays bounded): the
    parts (which object a pixel goes to) come from the coarse grid, the outline from the full one."""
    n = int(np.ceil(np.sqrt(fg.size / REBUILD_PIXELS)))
    if n <= 1:
        return from_maps(fg, inst, smooth, pos, neg, size, threshold, line)
    sub = (slice(None, None, n), slice(None, None, n))
    cpos = [(y // n, x // n) for y, x in pos]
    cneg = [(y // n, x // n) for y, x in neg]
    coarse = from_maps(fg[sub], inst[sub], smooth[sub], cpos, cneg, size / n, threshold, line)
    t = _click_threshold(fg, pos, neg, line)
    grown = coarse | (ndi.binary_dilation(coarse) & ~(fg[sub] > t))  # a cell wider towards the background only
    full = np.repeat(np.repeat(grown, n, 0), n, 1)[: fg.shape[0], : fg.shape[1]]
    near = np.repeat(np.repeat(coarse, n, 0), n, 1)[: fg.shape[0], : fg.shape[1]]
    out = (full & (fg > t)) | (near & (fg <= t) & (fg > WEAK))  # and what the rebuild took in below t
    return _keep_seeded(out | _disk_marks(out.shape, pos, 0), pos)


def _edt(side: np.ndarray, win: tuple[slice, slice], cut: bool = False) -> np.ndarray:
    """Distance to the nearest pixel off ``side`` in its crop ``win``, beyond the crop counting as on
    ``side``; with ``cut``, beyond the array too (the window: past the object but at the image's
    edge) counts as off ``side``. Where an object meets the image's edge, its edge is there: a
    negative click on a one-pixel strip along the image's edge is no deep wrong part (noc90 on the
    training half of real nuclei 4.51 -> 4.31, mean of three U-Nets; the missed side of a positive
    click keeps the image's edge as on it: 4.34 where it too was cut)."""
    out = np.pad(side[win], 1, constant_values=True)
    if cut:
        h, w = side.shape
        out[0] &= win[0].start > 0
        out[-1] &= win[0].stop < h
        out[:, 0] &= win[1].start > 0
        out[:, -1] &= win[1].stop < w
    return ndi.distance_transform_edt(out)[1:-1, 1:-1]


def _depth(side: np.ndarray, y: int, x: int, cut: bool = False) -> float:
    """How deep ``(y, x)`` lies in ``side`` (exact up to :data:`EDGE_DEPTH`, read in a crop around it;
    ``cut``: see :func:`_edt`)."""
    win = around(side.shape, y, x, EDGE_DEPTH + 2)
    return float(_edt(side, win, cut)[y - win[0].start, x - win[1].start])


def edge_fix(
    mask: np.ndarray,
    fg: np.ndarray,
    at: tuple[int, int],
    positive: bool,
    line: float,
    pos: Seeds,
    guard: Seeds = (),
) -> tuple[np.ndarray, float]:
    """Correct the edge of ``mask`` at the click ``at`` (in a wrong part near the edge); returns the
    mask and its foreground threshold. Near the click, the pixels on the clicked side no deeper than
    the click's part, of like foreground, change (a local correction); where instead moving the
    threshold past the clicked pixel's foreground changes the object only along its edge, no deeper
    than the click and no more than :data:`RING_AREA` times as much nor :data:`RING_SHARE` of the
    object (an object drawn a ring too large or too small), the threshold moves. The local
    correction leaves the pixels near the earlier clicks of the other sign, ``guard``
    (:data:`GUARD`), as they are, and is smoothed (:func:`.smoothing.smooth_correction`). A negative
    click nearer the object's own edge than the image's takes pixels near the object's edge only, not
    a strip along the image's edge (noc90 on real nuclei 3.92 -> 3.91 training half, 2.42 -> 2.41
    held-out half, mean of three U-Nets; most of the worst held-out objects touch the image's edge)."""
    y, x = at
    side = ~mask if positive else mask
    depth = _depth(side, y, x, not positive)
    cut = not positive and _depth(side, y, x) > depth  # the image's edge nearer than the object's: a strip there
    v = float(fg[y, x])
    reach = max(1.0, min(EDGE_REACH * depth, depth + EDGE_SPAN, REACH_SIZE * float(np.sqrt(mask.sum()))))
    win = around(mask.shape, y, x, reach + 5)
    wy, wx = y - win[0].start, x - win[1].start
    edt = _edt(side, win, cut)
    near = side[win] & (edt <= 1.5 * depth - 0.5 + 1e-6)
    near &= (fg[win] >= v - EDGE_LIKE) if positive else (fg[win] <= v + EDGE_LIKE)
    yy, xx = np.ogrid[: near.shape[0], : near.shape[1]]
    near &= (yy - wy) ** 2 + (xx - wx) ** 2 <= reach**2
    near &= ~near_points(win, guard, GUARD)
    near[wy, wx] = True
    parts, _ = ndi.label(near, np.ones((3, 3), bool))
    patch = parts == parts[wy, wx]
    most = min(int(RING_AREA * int(patch.sum())), int(RING_SHARE * int(mask.sum())))
    moved = _ring_move(mask, fg, at, positive, pos, depth, most)
    if moved is not None:
        return moved
    out = mask.copy()
    out[win] = mask[win] | patch if positive else mask[win] & ~patch
    return smooth_correction(out, at, positive, reach, guard, GUARD, int(patch.sum())), line


def _ring_move(
    mask: np.ndarray, fg: np.ndarray, at: tuple[int, int], positive: bool, pos: Seeds, depth: float, most: int
) -> tuple[np.ndarray, float] | None:
    """``mask`` with its threshold moved past the foreground at ``at`` (and the threshold), or ``None``
    where that would not take ``at`` or would change more than ``most`` pixels or deeper than ``depth``."""
    y, x = at
    v = float(fg[y, x])
    if positive and v > WEAK:
        t = v - CLICK_MARGIN
    elif not positive and pos and v + CLICK_MARGIN < min(float(fg[p]) for p in pos):
        t = v + CLICK_MARGIN
    else:
        return None
    y0, x0, y1, x1 = _mask_box(mask | _disk_marks(mask.shape, [at], 0))
    m = int(np.ceil(depth)) + 2
    win = (slice(max(0, y0 - m), y1 + m), slice(max(0, x0 - m), x1 + m))
    pos = [(py, px) for py, px in pos if win[0].start <= py < win[0].stop and win[1].start <= px < win[1].stop]
    sub, f = mask[win], fg[win]
    if positive:
        grown, _ = ndi.label((f > t) | sub, np.ones((3, 3), bool))
        moved = grown == grown[y - win[0].start, x - win[1].start]
    else:
        seeds = [(py - win[0].start, px - win[1].start) for py, px in pos if sub[py - win[0].start, px - win[1].start]]
        if not seeds:
            return None
        moved = _keep_seeded(sub & (f > t), seeds)
    change = moved ^ sub
    if not change[y - win[0].start, x - win[1].start] or change.sum() > most:
        return None
    if ndi.distance_transform_edt(change).max() > depth + 0.5:
        return None
    out = mask.copy()
    out[win] = moved
    return out, t


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


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
