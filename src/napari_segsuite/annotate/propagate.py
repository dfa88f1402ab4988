"""Z-propagation: an object drawn on one slice of a volume is carried to the slices above and below
until it ends.

On each next slice the object is seeded by the previous slice's mask, eroded, and grows inside the
previous mask dilated by about a quarter of its diameter: over the model's foreground where the
slice has maps (:class:`~.maps.PlaneMaps` with ``fg``), else over the pixels whose intensity is
nearer the object's than the background's on the previous slice. A seeded watershed on the distance
to the region's edge parts it from touching blobs further out. Propagation stops at the volume's
end, after ``max_slices``, or when the new mask has less than ``min_area_ratio`` of the previous
one's area or less than ``min_overlap`` of it lies on the previous mask. Other objects' pixels are
never taken. It returns one :class:`~.click.Edit` per slice (a one-slice window of the volume), so a
front end writes them all at once as one undo step; the user may correct any slice and propagate
again from there (the object's pixels on the slices it reaches are recomputed).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries, watershed

from ..progress import Progress, Work, drive
from .click import Edit
from .edit import window
from .maps import PlaneMaps

MapsFor = Callable[[int], "PlaneMaps | None"]


def _grey(image: np.ndarray, z: int, rgb: bool) -> np.ndarray:
    plane = np.asarray(image[z], np.float32)
    if rgb and plane.ndim == 3:
        plane = plane[..., :3].mean(-1)
    return ndi.gaussian_filter(plane, 1.0)


def _candidates(
    prev: np.ndarray, ring: np.ndarray, grey_prev: np.ndarray, grey_next: np.ndarray, maps: PlaneMaps | None
) -> np.ndarray:
    """Where the object may be on the next slice (window arrays): the model's foreground (cut between
    its objects), or the pixels nearer the object's median intensity than the background's."""
    if maps is not None and maps.fg is not None:
        cand = maps.fg > 0.5
        if maps.instances is not None:
            cand &= ~(find_boundaries(maps.instances, mode="inner") & (maps.instances > 0))
        return cand
    inside = float(np.median(grey_prev[prev]))
    outside = float(np.median(grey_prev[ring])) if ring.any() else float(np.median(grey_prev[~prev]))
    return np.abs(grey_next - inside) < np.abs(grey_next - outside)


def next_mask(
    prev: np.ndarray,
    labels_prev: np.ndarray,
    labels_next: np.ndarray,
    grey_prev: np.ndarray,
    grey_next: np.ndarray,
    object_id: int,
    maps: PlaneMaps | None = None,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The object on the next slice from its mask ``prev`` on this one (whole planes in, the mask of
    a window and the window out)."""
    area = int(prev.sum())
    r = max(2, int(round(0.5 * np.sqrt(area / np.pi))))  # a quarter of the diameter
    win = window(prev | (labels_next == object_id), margin=2 * r + 2)
    p, lab = prev[win], labels_next[win]
    allowed = (lab == 0) | (lab == object_id)
    near = ndi.binary_dilation(p, iterations=r)
    far = ndi.binary_dilation(near, iterations=r)
    ring = near & ~p & (labels_prev[win] == 0)
    crop = None
    if maps is not None and maps.fg is not None:
        crop = PlaneMaps(smooth=maps.smooth[win], fg=maps.fg[win], instances=None)
        if maps.instances is not None:
            crop.instances = maps.instances[win]
    cand = _candidates(p, ring, grey_prev[win], grey_next[win], crop) & allowed & far
    seed = ndi.binary_erosion(p, iterations=max(1, r // 2))
    seed = (seed if seed.any() else p) & cand
    if not seed.any():
        return np.zeros(p.shape, bool), win
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(cand).astype(np.float32), 1.0)
    markers = np.zeros(p.shape, np.int32)
    markers[cand & ~near] = 2
    markers[seed] = 1
    mask = watershed(-dist, markers, mask=cand) == 1
    mask = ndi.binary_fill_holes(mask) & allowed
    return mask, win


def propagate_steps(
    labels: np.ndarray,
    image: np.ndarray,
    object_id: int,
    z: int,
    *,
    maps: MapsFor | None = None,
    rgb: bool = False,
    directions: tuple[int, ...] = (-1, 1),
    max_slices: int = 64,
    min_area_ratio: float = 0.2,
    min_overlap: float = 0.5,
    min_pixels: int = 4,
) -> Work[list[Edit]]:
    """Carry object ``object_id`` from slice ``z`` of the ``(Z, Y, X)`` ``labels`` to the slices
    above and below (``directions``) on ``image`` (``(Z, Y, X)`` or ``(Z, Y, X, 3)`` with ``rgb``).

    Args:
        maps: ``z -> PlaneMaps | None``: a model's maps of slice ``z`` (``None``: the image there).

    Yields:
        :class:`Progress` once per slice done.

    Returns:
        One :class:`Edit` per slice reached (a ``(1, h, w)`` window of the volume), empty if none.
    """
    if labels.ndim != 3:
        raise ValueError(f"Propagation needs a volume (Z, Y, X); the labels are {labels.shape}.")
    start = np.asarray(labels[z]) == object_id
    if not object_id or not start.any():
        raise ValueError(f"Object {object_id} is not on slice {z}: pick an object drawn on this slice.")
    edits: list[Edit] = []
    grey: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in grey:
            grey[k] = _grey(image, k, rgb)
        return grey[k]

    total = sum(min(max_slices, z if d < 0 else labels.shape[0] - 1 - z) for d in directions)
    done = 0
    for d in directions:
        prev, zp = start, z
        for _ in range(max_slices):
            zn = zp + d
            if not 0 <= zn < labels.shape[0]:
                break
            lab_n = np.asarray(labels[zn])
            mask, win = next_mask(
                prev, np.asarray(labels[zp]), lab_n, plane(zp), plane(zn), object_id, maps(zn) if maps else None
            )
            area, before_area = int(mask.sum()), int(prev.sum())
            kept = int((mask & prev[win]).sum())
            if area < max(min_pixels, min_area_ratio * before_area) or kept < min_overlap * area:
                break
            before = lab_n[win]
            after = before.copy()
            after[(before == object_id) & ~mask] = 0
            after[mask] = object_id
            old_elsewhere = lab_n == object_id
            old_elsewhere[win] = False
            after_full = None
            if old_elsewhere.any():  # the object's pixels outside the window are recomputed too
                after_full = lab_n.copy()
                after_full[old_elsewhere] = 0
                after_full[win] = after
                edits.append(Edit(0, 0, lab_n[None].copy(), after_full[None], object_id, z0=zn))
            else:
                edits.append(Edit(win[0].start, win[1].start, before[None].copy(), after[None], object_id, z0=zn))
            prev = np.zeros(lab_n.shape, bool)
            prev[win] = mask
            zp = zn
            done += 1
            yield Progress(done, max(total, done), f"slice {zn}: {area} pixels")
    return edits


def propagate(labels: np.ndarray, image: np.ndarray, object_id: int, z: int, **kwargs: object) -> list[Edit]:
    """:func:`propagate_steps` run to the end (see there for the arguments)."""
    return drive(propagate_steps(labels, image, object_id, z, **kwargs))  # type: ignore[arg-type]


def joined(edits: list[Edit]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The indices and values of all ``edits`` of a volume together (one ``data_setitem``, one undo step)."""
    parts = [e.indices() for e in edits if e.changed]
    if not parts:
        empty = np.zeros(0, np.intp)
        return (empty, empty, empty), np.zeros(0, np.int32)
    idx = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    return idx, np.concatenate([e.values() for e in edits if e.changed])
