"""SOLO's targets (which grid cells own which object, per FPN level) and Matrix NMS."""

from __future__ import annotations

import torch

from .base import IGNORE

CELLS = (8, 16, 32)  # grid cell size (pixels) per level, equal to the FPN stride of that level
SCALES = ((0.0, 24.0), (16.0, 48.0), (32.0, float("inf")))  # sqrt(area) range per level
CENTRE_SIGMA = 0.4  # the positive cells cover the centre region: this fraction of the object's box


def matrix_nms(
    masks: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, *, kernel: str = "gaussian", sigma: float = 2.0
) -> torch.Tensor:
    """Decayed scores of SOLOv2's Matrix NMS.

    Each mask ``j`` is decayed by the masks ``i`` of its class scoring higher: by ``f(iou_ij)``, but
    with ``i``'s own chance of being suppressed compensated (divided by ``f(max overlap of i with a
    better mask)``); the strongest such decay wins. All in a few ``(n, n)`` matrix operations.

    Args:
        masks: ``(n, P)`` binary masks (float), sorted by ``scores`` descending.
        classes: ``(n,)`` class per mask (masks of other classes do not suppress each other).
        scores: ``(n,)`` descending.
        kernel: ``"gaussian"`` (``exp(-sigma * iou**2)``) or ``"linear"`` (``1 - iou``).
    """
    n = len(scores)
    if n == 0:
        return scores
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-6)
    better = torch.ones(n, n, dtype=torch.bool, device=masks.device).triu(1)  # [i, j]: i scores above j
    iou = iou * (better & (classes[:, None] == classes[None, :]))
    worst = iou.max(0).values  # per mask: its largest overlap with a better mask
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou**2 - worst[:, None] ** 2))
    elif kernel == "linear":
        decay = (1 - iou) / (1 - worst[:, None]).clamp(min=1e-6)
    else:
        raise ValueError(f"Unknown Matrix NMS kernel {kernel!r}; use 'gaussian' or 'linear'.")
    return scores * decay.min(0).values.clamp(max=1.0)


class _Targets:
    """Grid targets of one image: per level ``cate`` (class, 0 none) and ``valid`` maps; the
    positive cells (flat index over all levels), their object index and the object masks."""

    def __init__(
        self,
        cate: list[torch.Tensor],
        valid: list[torch.Tensor],
        pos_cell: torch.Tensor,
        pos_obj: torch.Tensor,
        masks: torch.Tensor,
    ) -> None:
        self.cate, self.valid, self.pos_cell, self.pos_obj, self.masks = cate, valid, pos_cell, pos_obj, masks


def _image_targets(ids: torch.Tensor, cls_map: torch.Tensor, num_classes: int) -> _Targets:
    """Targets from one image's ids and class maps ``(H, W)``. A cell whose centre pixel is unknown
    is left out of the category loss; larger objects are written first so smaller ones win a cell."""
    dev, (h, w) = ids.device, ids.shape
    obj_ids = torch.unique(ids)
    obj_ids = obj_ids[obj_ids > 0]
    masks = ids[None] == obj_ids[:, None, None]
    area = masks.flatten(1).sum(1).float()
    order = area.argsort(descending=True).tolist()
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    rows, cols = masks.any(2).float(), masks.any(1).float()
    cy = (masks.sum(2).float() @ ys) / area.clamp(min=1)
    cx = (masks.sum(1).float() @ xs) / area.clamp(min=1)
    box_h, box_w = rows.sum(1), cols.sum(1)
    classes = [_object_class(cls_map[m], num_classes) for m in masks]
    cate, valid, pos_cell, pos_obj, offset = [], [], [], [], 0
    for cell, (lo, hi) in zip(CELLS, SCALES):
        sh, sw = h // cell, w // cell
        centres = ids[cell // 2 :: cell, cell // 2 :: cell][:sh, :sw]
        grid = torch.zeros(sh, sw, dtype=torch.long, device=dev)
        owner = torch.full((sh, sw), -1, dtype=torch.long, device=dev)
        for i in order:
            if not lo <= float(area[i].sqrt()) <= hi:
                continue
            y0, y1, x0, x1 = _centre_cells(float(cy[i]), float(cx[i]), float(box_h[i]), float(box_w[i]), cell, sh, sw)
            grid[y0:y1, x0:x1] = classes[i]
            owner[y0:y1, x0:x1] = i
        cate.append(grid)
        valid.append(centres != IGNORE)
        flat = torch.nonzero(owner.flatten() >= 0).flatten()
        pos_cell.append(flat + offset)
        pos_obj.append(owner.flatten()[flat])
        offset += sh * sw
    return _Targets(cate, valid, torch.cat(pos_cell), torch.cat(pos_obj), masks)


def _object_class(pixel_classes: torch.Tensor, num_classes: int) -> int:
    """Most common object class (1..K-1) among an object's pixels; 1 when none is given."""
    c = pixel_classes[(pixel_classes > 0) & (pixel_classes < num_classes)]
    return int(torch.bincount(c).argmax()) if c.numel() else 1


def _centre_cells(cy: float, cx: float, bh: float, bw: float, cell: int, sh: int, sw: int) -> tuple[int, int, int, int]:
    """Cell ranges ``[y0, y1) x [x0, x1)`` of the centre region (``CENTRE_SIGMA`` of the box around
    the centre of mass), at most one cell from the centre cell, as in SOLO."""
    ci, cj = min(int(cy // cell), sh - 1), min(int(cx // cell), sw - 1)
    dy, dx = CENTRE_SIGMA * bh / 2, CENTRE_SIGMA * bw / 2
    y0 = max(int((cy - dy) // cell), ci - 1, 0)
    y1 = min(int((cy + dy) // cell), ci + 1, sh - 1)
    x0 = max(int((cx - dx) // cell), cj - 1, 0)
    x1 = min(int((cx + dx) // cell), cj + 1, sw - 1)
    return y0, y1 + 1, x0, x1 + 1
