"""Click and box annotation on one 2D plane (an image, or one slice of a volume) and its labels.

An :class:`AnnotationSession` holds the plane's :class:`~.maps.PlaneMaps`, its own copy of the
labels and the object being refined (the *active* object, with its positive and negative clicks).
Every operation returns an :class:`Edit`: the window it touched, before and after, so a front end
writes only the changed pixels (napari: ``Labels.data_setitem``, which napari's undo records).

Clicks:
- A positive click with no active object, or away from it, starts a new object (the next free id).
- Further positive clicks on or near the active object add to it; negative clicks take away from
  it ("not this"). Each click recomputes the active object from all its clicks, in their order,
  inside a window around them (so a click costs the same on a large image): with a model's maps, a
  click near the object's edge corrects the edge there (or moves the object's threshold, where
  that changes only a ring no deeper than the click), a click deep in a wrong part makes the
  object again from the model (see :func:`.regions.refine`).
- A negative click with no active object removes the object under it.
- :meth:`AnnotationSession.finish` ends the active object; the next click starts a new one.

The object comes from the model's cached maps, from a point model (DeepMask ``mask_at``) or, with no
model, from the smoothed image (see :mod:`.regions`). Objects never overwrite other objects, except
where a positive click says so (the pixels of another object under a positive click may be taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import regions
from .maps import PlaneMaps, classical_maps, point_mask

Window = tuple[slice, slice]


@dataclass
class Edit:
    """What an operation changed: the window at ``(y0, x0)``, its labels ``before`` and ``after``.

    A window of a volume has 3D ``before`` and ``after`` and starts at slice ``z0``.

    Attributes:
        object_id: The object made or changed (0 for a box with several objects or a removal).
    """

    y0: int
    x0: int
    before: np.ndarray
    after: np.ndarray
    object_id: int = 0
    z0: int = 0

    @property
    def changed(self) -> bool:
        return bool((self.before != self.after).any())

    def indices(self, z: int | None = None) -> tuple[np.ndarray, ...]:
        """Coordinates of the changed pixels in the plane ``(ys, xs)``, or in a volume ``(zs, ys, xs)``
        (a plane's window: on slice ``z``; a volume's window: ``z`` is not needed)."""
        if self.before.ndim == 3:
            zs, ys, xs = np.nonzero(self.before != self.after)
            return (zs + self.z0, ys + self.y0, xs + self.x0)
        ys, xs = np.nonzero(self.before != self.after)
        ys, xs = ys + self.y0, xs + self.x0
        return (ys, xs) if z is None else (np.full(len(ys), z), ys, xs)

    def values(self) -> np.ndarray:
        """The new labels of the changed pixels, in the order of :meth:`indices`."""
        return self.after[self.before != self.after]


class AnnotationSession:
    """Clicks and boxes on one plane.

    Args:
        image: The plane, ``(Y, X)`` or ``(Y, X, 3)`` (used for the classical fallback when ``maps``
            is not given).
        labels: ``(Y, X)`` integer labels (copied; 0 = no object); default all zeros.
        maps: The plane's :class:`PlaneMaps` from :func:`~.maps.compute_maps` (``None``: classical).
        rgb: Whether a trailing axis of 3 is colour (``None``: guess as napari does).
        box_model: Run the model on a box's crop (upscaled for small objects) instead of reading the
            cached objects; ``None`` (default) does so for object models and point models only.
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        maps: PlaneMaps | None = None,
        rgb: bool | None = None,
        box_model: bool | None = None,
    ) -> None:
        if maps is None:
            if image is None:
                raise ValueError("Give the image or its maps.")
            maps = classical_maps(image, rgb)
        self.maps = maps
        self.rgb = rgb
        self.image = image
        self.box_model = box_model
        shape = maps.shape
        if labels is None:
            labels = np.zeros(shape, np.int32)
        if tuple(labels.shape) != shape:
            raise ValueError(f"Labels of shape {tuple(labels.shape)} do not fit the image plane {shape}.")
        self.labels = np.array(labels)
        self.active = 0
        self.pos: list[tuple[int, int]] = []
        self.neg: list[tuple[int, int]] = []
        self.clicks: list[regions.Click] = []  # the active object's clicks in order: (y, x, positive)
        self._state: tuple[int, int, int, np.ndarray, float] | None = None  # see _start
        self._bbox: tuple[int, int, int, int] | None = None  # of the active object's pixels (y0, x0, y1, x1)

    # --- the labels -----------------------------------------------------------------------------
    def set_labels(self, labels: np.ndarray) -> None:
        """Replace the session's labels (after the user painted or undid something); keeps the active object."""
        self.labels = np.array(labels)

    def next_id(self) -> int:
        nxt = int(self.labels.max(initial=0)) + 1
        if np.issubdtype(self.labels.dtype, np.integer) and nxt > np.iinfo(self.labels.dtype).max:
            raise ValueError(f"The labels ({self.labels.dtype}) hold no more ids; use a Labels layer of int32.")
        return nxt

    def _apply(self, win: Window, after: np.ndarray, object_id: int = 0) -> Edit:
        before = self.labels[win].copy()
        self.labels[win] = after
        return Edit(win[0].start, win[1].start, before, after, object_id)

    # --- clicks ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """End the active object: the next click starts a new one."""
        self.active, self.pos, self.neg, self.clicks, self._bbox, self._state = 0, [], [], [], None, None

    def select(self, y: float, x: float) -> int:
        """Make the object under ``(y, x)`` the active one (to refine it); returns its id (0: none there)."""
        yy, xx = self._check(y, x)
        self.finish()
        hit = int(self.labels[yy, xx])
        if hit:
            self.active, self.pos, self.clicks = hit, [(yy, xx)], [(yy, xx, True)]
            self._bbox = _bbox(self.labels == hit)
        return hit

    def add_click(self, y: float, x: float, positive: bool = True, new_object: bool | None = None) -> Edit:
        """A click at ``(y, x)`` (pixels of the plane).

        Args:
            positive: ``True`` adds (this is the object), ``False`` takes away ("not this").
            new_object: ``True`` starts a new object, ``False`` refines the active one, ``None``
                decides: a positive click away from the active object (outside its box grown by
                half, or on another object the model sees) starts a new one.
        """
        yy, xx = self._check(y, x)
        if new_object is None:
            new_object = positive and self._starts_new(yy, xx)
        if new_object:
            self.finish()
        if not self.active:
            if not positive:  # nothing being refined: "not this" removes the object under the click
                return self.remove(yy, xx)
            self.active = self.next_id()
        (self.pos if positive else self.neg).append((yy, xx))
        self.clicks.append((yy, xx, positive))
        if not self.pos:
            return self._apply(*self._empty_window(yy, xx))
        return self._refresh()

    def remove(self, y: float, x: float) -> Edit:
        """Delete the object under ``(y, x)`` (no change on background)."""
        yy, xx = self._check(y, x)
        hit = int(self.labels[yy, xx])
        if not hit:
            return self._apply(*self._empty_window(yy, xx))
        y0, x0, y1, x1 = _bbox(self.labels == hit)
        win = (slice(y0, y1), slice(x0, x1))
        after = self.labels[win].copy()
        after[after == hit] = 0
        if hit == self.active:
            self.finish()
        return self._apply(win, after, hit)

    def _check(self, y: float, x: float) -> tuple[int, int]:
        yy, xx = round(float(y)), round(float(x))
        h, w = self.maps.shape
        if not (0 <= yy < h and 0 <= xx < w):
            raise ValueError(f"The click ({y:.1f}, {x:.1f}) is outside the image ({h} x {w}).")
        return yy, xx

    def _empty_window(self, y: int, x: int) -> tuple[Window, np.ndarray]:
        win = (slice(y, y + 1), slice(x, x + 1))
        return win, self.labels[win].copy()

    def _starts_new(self, y: int, x: int) -> bool:
        if not self.active or self._bbox is None:
            return True
        y0, x0, y1, x1 = self._bbox
        gy, gx = max(4, (y1 - y0) // 2), max(4, (x1 - x0) // 2)
        if not (y0 - gy <= y < y1 + gy and x0 - gx <= x < x1 + gx):
            return True
        inst = self.maps.instances
        if inst is None or self.labels[y, x] == self.active or not inst[y, x]:
            return False
        return int(inst[y, x]) not in {int(inst[p]) for p in self.pos}

    def _window(self, margin: float) -> Window:
        pts = np.array(self.pos + self.neg)
        y0, x0 = pts.min(0)
        y1, x1 = pts.max(0) + 1
        if self._bbox is not None:
            y0, x0 = min(y0, self._bbox[0]), min(x0, self._bbox[1])
            y1, x1 = max(y1, self._bbox[2]), max(x1, self._bbox[3])
        inst = self.maps.instances
        if inst is not None:  # the model's objects under the positive clicks, whole
            for p in self.pos:
                box = self.maps.boxes[inst[p] - 1] if inst[p] else None
                if box is not None:
                    y0, x0 = min(y0, box[0].start), min(x0, box[1].start)
                    y1, x1 = max(y1, box[0].stop), max(x1, box[1].stop)
        h, w = self.maps.shape
        m = int(np.ceil(margin))
        return (slice(max(0, int(y0) - m), min(h, int(y1) + m)), slice(max(0, int(x0) - m), min(w, int(x1) + m)))

    def _object(self, win: Window) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """The active object's mask in ``win`` from its clicks; from a model's maps also the object
        before the last click (``None``: made anew) and the threshold the clicks left (else ``None``)."""
        oy, ox = win[0].start, win[1].start
        pos = [(y - oy, x - ox) for y, x in self.pos]
        neg = [(y - oy, x - ox) for y, x in self.neg]
        maps = self.maps
        if maps.fg is not None and maps.instances is not None:
            clicks = [(y - oy, x - ox, p) for y, x, p in self.clicks]
            start = self._start(win)
            mask, line = regions.refine(
                maps.fg[win],
                maps.instances[win],
                maps.smooth[win],
                clicks,
                maps.size,
                maps.threshold,
                maps.outline,
                start,
            )
            return mask, None if start is None else start[0], line
        if maps.x is not None:
            return self._from_point_model(win, pos, neg), None, None
        return regions.classical(maps.smooth[win], pos, neg, maps.size), None, None

    def _start(self, win: Window) -> tuple[np.ndarray, float] | None:
        """The object (in ``win``) and its threshold after all its clicks but the last, as the last
        click left them (so a click applies itself only, not all the object's clicks again)."""
        if self._state is None or self._state[0] != len(self.clicks) - 1:
            return None
        _, y0, x0, mask, line = self._state
        h, w = mask.shape
        oy, ox = y0 - win[0].start, x0 - win[1].start
        if oy < 0 or ox < 0 or oy + h > win[0].stop - win[0].start or ox + w > win[1].stop - win[1].start:
            return None
        out = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), bool)
        out[oy : oy + h, ox : ox + w] = mask
        return out, line

    def _from_point_model(self, win: Window, pos: regions.Seeds, neg: regions.Seeds) -> np.ndarray:
        """DeepMask: its mask at each positive click, united; negative clicks split it by seeded watershed."""
        from scipy import ndimage as ndi

        oy, ox = win[0].start, win[1].start
        union = np.zeros((win[0].stop - oy, win[1].stop - ox), bool)
        for y, x in pos:
            union |= point_mask(self.maps, y + oy, x + ox)[win]
        union |= regions._disk_marks(union.shape, pos)
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(union).astype(np.float32), 1.0)
        return regions.seeded_split(union, dist, pos, regions._disk_marks(union.shape, neg))

    def _refresh(self) -> Edit:
        """Recompute the active object inside a window around its clicks (grown while the object
        reaches the window's edge, up to the whole plane) and write it."""
        margin = 1.5 * self.maps.size
        h, w = self.maps.shape
        while True:
            win = self._window(margin)
            mask, before, line = self._object(win)
            full = win[0].stop - win[0].start >= h and win[1].stop - win[1].start >= w
            if full or not _touches_inner_edge(mask, win, (h, w)) or margin > max(h, w):
                break
            margin *= 2
        lab = self.labels[win]
        old = lab == self.active
        taken = {int(self.labels[p]) for p in self.pos} - {0, self.active}
        allowed = (lab == 0) | old
        if taken:  # another object's pixels go only where this click changed the object (not all it covers)
            changed = mask if before is None else mask & ~before
            allowed |= np.isin(lab, list(taken)) & changed
        new = mask & allowed
        after = lab.copy()
        after[old & ~new] = 0
        after[new] = self.active
        self._bbox = _bbox(new, (win[0].start, win[1].start)) if new.any() else self._bbox
        if line is not None:  # the object as written (the next click corrects what it sees), cut to its box
            y0, x0, y1, x1 = _bbox(new)
            self._state = (len(self.clicks), win[0].start + y0, win[1].start + x0, new[y0:y1, x0:x1].copy(), line)
        return self._apply(win, after, self.active)

    # --- boxes ----------------------------------------------------------------------------------
    def box(
        self, y0: float, x0: float, y1: float, x1: float, run_model: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> Edit:
        """Segment the objects inside the box ``[y0, y1) x [x0, x1)``: each gets a new id, on pixels
        no other object holds. With a model, its cached objects mostly (half their area or more)
        inside the box, or the model run on the crop (see ``box_model``); without, the classical
        objects of the crop.

        Args:
            run_model: ``crop -> ids`` to run a model on the crop (default: :func:`segment_crop` with
                the maps' model).
        """
        self.finish()
        h, w = self.maps.shape
        ya, yb = sorted((int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))))
        xa, xb = sorted((int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))))
        if yb - ya < 2 or xb - xa < 2:
            raise ValueError(f"The box ({y0:.0f}, {x0:.0f}) - ({y1:.0f}, {x1:.0f}) holds no pixels of the image.")
        win = (slice(ya, yb), slice(xa, xb))
        ids = self._box_objects(win, run_model)
        lab = self.labels[win]
        after = lab.copy()
        nxt = self.next_id()
        for k, i in enumerate(np.unique(ids[ids > 0])):
            after[(ids == i) & (lab == 0)] = nxt + k
        return self._apply(win, after)

    def _box_objects(self, win: Window, run_model: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        maps = self.maps
        use_model = self.box_model if self.box_model is not None else maps.kind == "point"
        if maps.model is not None and (use_model or run_model is not None) and self.image is not None:
            from .boxes import segment_crop

            crop = np.asarray(self.image)[win]
            if run_model is not None:
                return np.asarray(run_model(crop))
            return segment_crop(maps.model, crop, maps.size, rgb=self.rgb)
        if maps.instances is not None:
            inst = maps.instances
            ids = inst[win].copy()
            found = np.unique(ids[ids > 0])
            areas = np.bincount(inst.ravel(), minlength=int(inst.max()) + 1)
            inside = np.bincount(ids.ravel(), minlength=len(areas))
            keep = found[inside[found] >= 0.5 * areas[found]]
            ids[~np.isin(ids, keep)] = 0
            return ids
        return regions.objects_in_box(maps.smooth[win])


def _bbox(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(rows):
        return (offset[0], offset[1], offset[0], offset[1])
    return (rows[0] + offset[0], cols[0] + offset[1], rows[-1] + 1 + offset[0], cols[-1] + 1 + offset[1])


def _touches_inner_edge(mask: np.ndarray, win: Window, shape: tuple[int, int]) -> bool:
    """Whether ``mask`` reaches an edge of its window that is not the image's edge."""
    return bool(
        (win[0].start > 0 and mask[0].any())
        or (win[0].stop < shape[0] and mask[-1].any())
        or (win[1].start > 0 and mask[:, 0].any())
        or (win[1].stop < shape[1] and mask[:, -1].any())
    )
