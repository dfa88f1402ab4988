"""Windows and disks around clicks: the crops the click corrections work in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Window = tuple[slice, slice]


def around(shape: tuple[int, ...], y: int, x: int, r: float) -> Window:
    """The square crop of an array of ``shape`` within ``r`` pixels of ``(y, x)`` (cut at its edges)."""
    m = int(np.ceil(r))
    return (slice(max(0, y - m), min(shape[0], y + m + 1)), slice(max(0, x - m), min(shape[1], x + m + 1)))


def near_points(win: Window, points: Sequence[tuple[int, int]], r: float) -> np.ndarray:
    """Pixels of the crop ``win`` within ``r`` of any of ``points`` (given in the array's coordinates)."""
    h, w = win[0].stop - win[0].start, win[1].stop - win[1].start
    yy, xx = np.ogrid[:h, :w]
    out = np.zeros((h, w), bool)
    for py, px in points:
        out |= (yy - (py - win[0].start)) ** 2 + (xx - (px - win[1].start)) ** 2 <= r**2
    return out
