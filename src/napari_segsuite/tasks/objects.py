"""Objects as object models give them (a mask, a score and a class each) and how they become a label
image: each pixel to the best-scoring object that claims it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Obj:
    """One detected object: its mask inside its bounding box, placed at ``(y0, x0)`` in the image."""

    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool
    score: float
    cls: int = 1

    @property
    def centroid(self) -> tuple[float, float]:
        yy, xx = np.nonzero(self.mask)
        return self.y0 + float(yy.mean()), self.x0 + float(xx.mean())


def objects_from_masks(
    masks: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None, offset: tuple[int, int] = (0, 0)
) -> list[Obj]:
    """:class:`Obj` list from ``(n, H, W)`` boolean masks (empty masks dropped), shifted by ``offset``."""
    out = []
    classes = np.ones(len(masks), np.int64) if classes is None else np.asarray(classes)
    for m, s, c in zip(np.asarray(masks, bool), np.asarray(scores, np.float64), classes):
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if not len(rows):
            continue
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(Obj(int(y0) + offset[0], int(x0) + offset[1], m[y0:y1, x0:x1].copy(), float(s), int(c)))
    return out


def paste(
    objects: list[Obj], shape: tuple[int, int], *, min_size: int = 8, min_visible: float = 0.5
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Object list to a label image, each pixel to one object.

    Objects are painted best score first, each only onto pixels no better object took; an object
    keeping less than ``min_visible`` of its mask (a duplicate of a better one) or fewer than
    ``min_size`` pixels is dropped.

    Returns:
        ``(labels, features)``: int32 ids 1..N and a table with ``index`` (the id), ``class`` and
        ``score`` per object, in id order (the shape of a napari Labels layer's ``features``).
    """
    labels = np.zeros(shape, np.int32)
    ids: list[int] = []
    cls: list[int] = []
    scores: list[float] = []
    for o in sorted(objects, key=lambda o: -o.score):
        h, w = o.mask.shape
        win = labels[o.y0 : o.y0 + h, o.x0 : o.x0 + w]
        m = o.mask[: win.shape[0], : win.shape[1]]
        free = m & (win == 0)
        n_free = int(free.sum())
        if n_free < min_size or n_free < min_visible * int(m.sum()):
            continue
        ids.append(len(ids) + 1)
        win[free] = ids[-1]
        cls.append(o.cls)
        scores.append(o.score)
    return labels, {
        "index": np.array(ids, np.int32),
        "class": np.array(cls, np.int64),
        "score": np.array(scores, np.float32),
    }
