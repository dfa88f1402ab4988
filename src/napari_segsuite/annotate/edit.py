"""Object editing on a label array: merge, split (two seeds, or a drawn line), delete, fill holes,
remove small objects.

Every function takes the labels (a 2D plane, a slice of a volume, or a whole ``(Z, Y, X)`` volume),
leaves them as they are and returns an :class:`~.click.Edit`: the window it touched, before and
after, so a front end writes only the changed pixels (napari: ``Labels.data_setitem``, one undo
step). Pixels of objects other than the edited ones are never changed. New ids are the next free id
(``next_id``, by default one more than the largest id in ``labels``; on a slice of a volume pass the
volume's, so the id is free in the whole volume).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import line as draw_line
from skimage.filters import sobel
from skimage.segmentation import watershed

from .click import Edit

Point = Sequence[float]


def free_id(labels: np.ndarray) -> int:
    """The next free id of ``labels`` (one more than the largest), checked against the dtype."""
    nxt = int(np.max(labels, initial=0)) + 1
    if np.issubdtype(labels.dtype, np.integer) and nxt > np.iinfo(labels.dtype).max:
        raise ValueError(f"The labels ({labels.dtype}) hold no more ids; use a Labels layer of int32.")
    return nxt


def window(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """The bounding box of ``mask``'s pixels grown by ``margin`` (clipped to the array)."""
    box = ndi.find_objects(mask.astype(np.int8))
    if not box or box[0] is None:
        raise ValueError("Nothing to edit: the mask is empty.")
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box[0], mask.shape))


def make_edit(labels: np.ndarray, win: tuple[slice, ...], after: np.ndarray, object_id: int = 0) -> Edit:
    """The :class:`Edit` writing ``after`` into ``labels[win]`` (a plane's or a volume's window)."""
    before = np.array(labels[win])
    if labels.ndim == 3:
        return Edit(win[1].start, win[2].start, before, after, object_id, z0=win[0].start)
    return Edit(win[0].start, win[1].start, before, after, object_id)


def apply(labels: np.ndarray, edit: Edit, z: int | None = None) -> np.ndarray:
    """Write ``edit`` into ``labels`` in place (``z``: the slice a plane's edit was made on); returns ``labels``."""
    labels[edit.indices(z)] = edit.values()
    return labels


def _object_at(labels: np.ndarray, point: Point) -> tuple[int, tuple[int, ...]]:
    idx = tuple(int(round(float(c))) for c in point)
    if len(idx) != labels.ndim or not all(0 <= i < n for i, n in zip(idx, labels.shape)):
        raise ValueError(f"The point {tuple(point)} is outside the labels {labels.shape}.")
    return int(labels[idx]), idx


def _check_id(labels: np.ndarray, object_id: int) -> None:
    if not object_id or not (labels == object_id).any():
        raise ValueError(f"There is no object {object_id} here.")


# --- merge and delete ---------------------------------------------------------------------------------
def merge(labels: np.ndarray, a: int, b: int) -> Edit:
    """Objects ``a`` and ``b`` become one object, ``a``."""
    if a == b:
        raise ValueError(f"Both clicks are on object {a}: click two different objects to merge them.")
    _check_id(labels, a)
    _check_id(labels, b)
    win = window((labels == a) | (labels == b))
    after = np.array(labels[win])
    after[after == b] = a
    return make_edit(labels, win, after, a)


def delete(labels: np.ndarray, object_id: int) -> Edit:
    """Object ``object_id`` is removed (its pixels become background)."""
    _check_id(labels, object_id)
    win = window(labels == object_id)
    after = np.array(labels[win])
    after[after == object_id] = 0
    return make_edit(labels, win, after, object_id)


# --- split --------------------------------------------------------------------------------------------
def split_by_seeds(
    labels: np.ndarray,
    seed_a: Point,
    seed_b: Point,
    *,
    smooth: np.ndarray | None = None,
    fg: np.ndarray | None = None,
    next_id: int | None = None,
) -> Edit:
    """Split the object holding both seeds in two by a seeded watershed inside the object: the part
    won by ``seed_a`` keeps the id, the part won by ``seed_b`` gets a new one (both are non-empty and
    connected).

    The landscape is the distance to the object's edge (touching round objects part at their neck);
    with the image (``smooth``, the plane's smoothed grey, shape of ``labels``) its edges and with a
    model's foreground probability (``fg``) its dips count too.
    """
    a, pa = _object_at(labels, seed_a)
    b, pb = _object_at(labels, seed_b)
    if not a:
        raise ValueError("The first seed is on the background: click twice inside the object to split.")
    if a != b:
        raise ValueError(f"The seeds are on two objects ({a} and {b}): click twice inside the same object.")
    if pa == pb:
        raise ValueError("Both seeds are on the same pixel: click the two parts of the object.")
    nid = free_id(labels) if next_id is None else next_id
    win = window(labels == a, margin=1)
    mask = np.asarray(labels[win]) == a
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask).astype(np.float32), 1.0)
    elevation = -dist / max(float(dist.max()), 1e-6)
    if smooth is not None:
        edges = sobel(np.asarray(smooth, np.float32)[win])
        elevation += edges / max(float(edges[mask].max()), 1e-6)
    if fg is not None:
        elevation += 1.0 - np.asarray(fg, np.float32)[win]
    markers = np.zeros(mask.shape, np.int32)
    origin = [s.start for s in win]
    markers[tuple(p - o for p, o in zip(pa, origin))] = 1
    markers[tuple(p - o for p, o in zip(pb, origin))] = 2
    parts = watershed(elevation, markers, mask=mask)
    after = np.array(labels[win])
    after[parts == 2] = nid
    return make_edit(labels, win, after, nid)


def line_pixels(shape: tuple[int, ...], points: Sequence[Point] | np.ndarray) -> np.ndarray:
    """The pixels of the polyline through ``points`` (``(y, x)``), as a bool ``shape`` mask (8-connected)."""
    pts = np.round(np.asarray(points, float)).astype(int)
    out = np.zeros(shape, bool)
    if len(pts) == 1:
        pts = np.repeat(pts, 2, axis=0)
    for p, q in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(int(p[0]), int(p[1]), int(q[0]), int(q[1]))
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        out[rr[ok], cc[ok]] = True
    return out


def split_by_line(
    labels: np.ndarray,
    points: Sequence[Point] | np.ndarray,
    *,
    object_id: int | None = None,
    next_id: int | None = None,
    min_piece: int = 4,
) -> Edit:
    """Cut an object of a 2D plane along the polyline through ``points`` (``(y, x)``): its connected
    pieces (4-connected, so a diagonal line cuts) each get their own id, the largest keeps the old
    one. The line's pixels and pieces under ``min_piece`` pixels go to the nearest piece, so the
    object keeps its area.

    Args:
        object_id: The object to cut (default: the one the line crosses most).
    """
    if labels.ndim != 2:
        raise ValueError("A line cuts one plane: pass the current slice of a volume.")
    line = line_pixels(labels.shape, points)
    if object_id is None:
        under = np.asarray(labels)[line]
        under = under[under > 0]
        if not len(under):
            raise ValueError("The line crosses no object: draw it across the object to cut.")
        object_id = int(np.bincount(under).argmax())
    _check_id(labels, object_id)
    win = window(labels == object_id, margin=1)
    mask = np.asarray(labels[win]) == object_id
    pieces, n = ndi.label(mask & ~line[win])
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    big = [i for i in range(1, n + 1) if sizes[i] >= min_piece]
    if len(big) < 2:
        raise ValueError(
            f"The line does not cut object {object_id} in two: draw it across the object, from background to background."
        )
    keep = np.isin(pieces, big)
    _, (iy, ix) = ndi.distance_transform_edt(~keep, return_indices=True)
    nearest = np.where(mask, pieces[iy, ix], 0)
    nid = free_id(labels) if next_id is None else next_id
    if np.issubdtype(labels.dtype, np.integer) and nid + len(big) - 2 > np.iinfo(labels.dtype).max:
        raise ValueError(f"The labels ({labels.dtype}) hold no more ids; use a Labels layer of int32.")
    after = np.array(labels[win])
    for k, piece in enumerate(sorted(big, key=lambda i: -sizes[i])[1:]):
        after[nearest == piece] = nid + k
    return make_edit(labels, win, after, object_id)


# --- clean-up -----------------------------------------------------------------------------------------
def _holes(mask: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """The holes of ``mask``: parts of the rest not connected to the edge, and holding no other object."""
    comps, _ = ndi.label(np.pad(~mask, 1, constant_values=True))
    outer = comps.flat[0]
    comps = comps[tuple(slice(1, -1) for _ in mask.shape)]
    blocked = np.unique(comps[(lab != 0) & ~mask])
    return (comps > 0) & (comps != outer) & ~np.isin(comps, blocked)


def fill_holes(labels: np.ndarray, ids: Sequence[int] | None = None, *, planes: bool = False) -> Edit:
    """Fill the holes of the objects ``ids`` (default: all) with their id: background enclosed by the
    object (a hole holding another object is left alone). ``planes=True`` fills the holes of each
    slice of a volume (what looks like a hole on a slice), else holes in the labels' own dimensions."""
    lab = np.asarray(labels)
    wanted = [int(i) for i in (np.unique(lab[lab > 0]) if ids is None else ids) if i]
    boxes = ndi.find_objects(lab)
    after = np.array(lab)
    for i in wanted:
        if i > len(boxes) or boxes[i - 1] is None:
            raise ValueError(f"There is no object {i} here.")
        win = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(boxes[i - 1], lab.shape))
        sub, mask = lab[win], lab[win] == i
        if planes and lab.ndim == 3:
            holes = np.stack([_holes(m, s) for m, s in zip(mask, sub)])
        else:
            holes = _holes(mask, sub)
        after[win][holes] = i
    changed = after != lab
    if not changed.any():
        return make_edit(lab, tuple(slice(0, 1) for _ in lab.shape), np.array(lab[(slice(0, 1),) * lab.ndim]))
    win = window(changed)
    return make_edit(lab, win, after[win], wanted[0] if len(wanted) == 1 else 0)


def remove_small(labels: np.ndarray, min_size: int) -> Edit:
    """Delete every object of fewer than ``min_size`` pixels (voxels in a volume)."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise ValueError(f"Labels must be integers, not {lab.dtype}.")
    sizes = np.bincount(lab.ravel().astype(np.int64, copy=False))
    small = (sizes > 0) & (sizes < min_size)
    small[0] = False
    gone = small[lab]
    if not gone.any():
        return make_edit(lab, tuple(slice(0, 1) for _ in lab.shape), np.array(lab[(slice(0, 1),) * lab.ndim]))
    win = window(gone)
    after = np.array(lab[win])
    after[gone[win]] = 0
    return make_edit(lab, win, after)
