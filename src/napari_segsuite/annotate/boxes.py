"""A model run on a box's crop: upscaled when the objects are small, so the model sees them at a size
it segments well, and the objects brought back to the crop's pixels."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from ..inference import segment
from ..model_files import SegModel
from ..progress import drive

#: Objects narrower than this (pixels) are enlarged before the model sees them.
SMALL = 16.0
#: Crops are enlarged to at least this many pixels on their shorter side.
MIN_SIDE = 64


def zoom_for(size: float, shape: tuple[int, ...]) -> int:
    """The integer upscaling of a crop of ``shape`` whose objects are ``size`` pixels across."""
    factor = 1
    while size * factor < SMALL or min(shape[:2]) * factor < MIN_SIDE:
        factor *= 2
        if factor >= 8:
            break
    return factor


def segment_crop(
    model: SegModel, crop: np.ndarray, size: float, *, rgb: bool | None = None, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Object ids (int32) of a ``(h, w)`` or ``(h, w, 3)`` crop: the model's instances, or the
    connected regions of its foreground classes (semantic models)."""
    factor = zoom_for(size, crop.shape)
    big = np.asarray(crop)
    if factor > 1:
        big = np.repeat(np.repeat(big, factor, axis=0), factor, axis=1)
    seg = drive(segment(model, big, rgb=rgb, device=device, tile=512))
    ids = seg.instances if seg.instances is not None else ndi.label(np.asarray(seg.labels) > 0)[0]
    ids = np.asarray(ids)
    if factor > 1:  # back to the crop's pixels: the id at each pixel's centre
        off = factor // 2
        ids = ids[off::factor, off::factor][: crop.shape[0], : crop.shape[1]]
    return ids.astype(np.int32)
