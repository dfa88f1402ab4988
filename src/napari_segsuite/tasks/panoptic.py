"""Panoptic segmentation: every pixel gets a class, and pixels of countable classes an object id.

Conventions: classes are indices ``0..K-1``; ``thing_classes`` lists the countable ones (cells,
nuclei), every other class is *stuff* (background, tissue) whose pixels form one region per image.
A panoptic result is a pair of label images: ``semantic`` (class per pixel) and ``instances``
(ids 1..N on thing pixels, 0 on stuff).

The representation learnt by Panoptic-DeepLab (Cheng et al., 2020), built here from the engine's
targets ``y`` ``(N, 2, H, W)`` (see :mod:`napari_segsuite.models.base`):

- class probabilities (K maps),
- a centre heatmap (a Gaussian at each thing object's centre of mass),
- offsets (2 maps, in pixels): from each thing pixel to its object's centre.

:func:`postprocess` turns the blended maps back into labels (centres by max-pool NMS, pixels
grouped by the centre their offset points to). :func:`pq` is the panoptic quality of Kirillov et
al. (2019), with the COCO panoptic handling of unannotated pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

IGNORE = -1
#: Columns of the per-class count table of :func:`pq_counts`.
TP, FP, FN, IOU_SUM = 0, 1, 2, 3


# --- metric --------------------------------------------------------------------------------------

def _thing_lut(thing_classes: Iterable[int], num_classes: int) -> np.ndarray:
    lut = np.zeros(num_classes, bool)
    for c in thing_classes:
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"Thing class {c} is outside 0..{num_classes - 1}.")
        lut[int(c)] = True
    return lut


def _segment_ids(sem: np.ndarray, inst: np.ndarray, things: np.ndarray, keep: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Flat segment index per pixel (-1: in no segment) and the class of each segment.

    A stuff class is one segment; a thing class has one segment per instance id (id <= 0: none).
    """
    k = len(things)
    sem = sem.astype(np.int64).ravel()
    inst = inst.astype(np.int64).ravel()
    known = keep.ravel() & (sem >= 0) & (sem < k)
    is_thing = np.zeros_like(known)
    is_thing[known] = things[sem[known]]
    known &= ~is_thing | (inst > 0)
    key = np.full(sem.shape, -1, np.int64)
    stride = int(inst.max(initial=0)) + 1
    key[known] = sem[known] * stride + np.where(is_thing[known], inst[known], 0)
    uniq, inv = np.unique(key[known], return_inverse=True)
    ids = np.full(sem.shape, -1, np.int64)
    ids[known] = inv
    return ids, uniq // stride


def pq_counts(pred_sem: np.ndarray, pred_inst: np.ndarray, gt_sem: np.ndarray, gt_inst: np.ndarray,
              thing_classes: Iterable[int], num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """Per-class panoptic counts of one image, to be summed over images and given to :func:`pq_from_counts`.

    Segments of the same class match when their IoU exceeds 0.5 (one-to-one by construction).
    Ground-truth pixels that are ``ignore`` (in either image), and thing pixels without an
    instance id, are *void*: left out of every IoU, and a predicted segment lying more than half
    on void is not a false positive (the COCO panoptic convention).

    Returns:
        ``(num_classes, 4)`` float64: true positives, false positives, false negatives and the
        sum of the true positives' IoUs (columns :data:`TP`, :data:`FP`, :data:`FN`, :data:`IOU_SUM`).
    """
    gt_sem, gt_inst = np.asarray(gt_sem), np.asarray(gt_inst)
    pred_sem, pred_inst = np.asarray(pred_sem), np.asarray(pred_inst)
    if not (gt_sem.shape == gt_inst.shape == pred_sem.shape == pred_inst.shape):
        raise ValueError("Predicted and true semantic and instance images must have one shape.")
    things = _thing_lut(thing_classes, num_classes)
    gt_ids, gt_cls = _segment_ids(gt_sem, gt_inst, things, (gt_sem != ignore) & (gt_inst != ignore))
    void = gt_ids < 0
    pred_ids, pred_cls = _segment_ids(pred_sem, pred_inst, things, np.ones(pred_sem.shape, bool))
    n_gt, n_pred = len(gt_cls), len(pred_cls)
    gt_area = np.bincount(gt_ids[~void], minlength=n_gt)
    in_pred = pred_ids >= 0
    pred_full = np.bincount(pred_ids[in_pred], minlength=n_pred)
    pred_void = np.bincount(pred_ids[in_pred & void], minlength=n_pred)
    both = in_pred & ~void
    pairs, inter = np.unique(gt_ids[both] * max(n_pred, 1) + pred_ids[both], return_counts=True)
    g, p = pairs // max(n_pred, 1), pairs % max(n_pred, 1)
    iou = inter / (gt_area[g] + (pred_full - pred_void)[p] - inter)
    hit = (gt_cls[g] == pred_cls[p]) & (iou > 0.5)
    counts = np.zeros((num_classes, 4))
    np.add.at(counts[:, TP], gt_cls[g[hit]], 1)
    np.add.at(counts[:, IOU_SUM], gt_cls[g[hit]], iou[hit])
    gt_hit = np.zeros(n_gt, bool)
    gt_hit[g[hit]] = True
    pred_hit = np.zeros(n_pred, bool)
    pred_hit[p[hit]] = True
    np.add.at(counts[:, FN], gt_cls[~gt_hit], 1)
    mostly_void = pred_void > 0.5 * pred_full
    np.add.at(counts[:, FP], pred_cls[~pred_hit & ~mostly_void], 1)
    return counts


def pq_from_counts(counts: np.ndarray, thing_classes: Iterable[int] = ()) -> dict:
    """PQ, SQ and RQ from summed :func:`pq_counts`.

    Per class: PQ = sum IoU(TP) / (TP + FP/2 + FN/2), SQ = mean IoU of the TPs, RQ = TP / (TP +
    FP/2 + FN/2). The averages run over the classes present (a TP, FP or FN); an average over no
    class is NaN.

    Returns:
        ``pq``, ``sq``, ``rq``, ``pq_things``, ``pq_stuff`` (floats) and ``pq_per_class``,
        ``sq_per_class``, ``rq_per_class`` (dicts class index -> value, classes present only).
    """
    counts = np.asarray(counts, np.float64)
    tp, fp, fn, iou_sum = counts.T
    denom = tp + fp / 2 + fn / 2
    present = denom > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq_c = np.where(present, iou_sum / denom, np.nan)
        sq_c = np.where(tp > 0, iou_sum / tp, 0.0)
        rq_c = np.where(present, tp / denom, np.nan)
    things = _thing_lut(thing_classes, len(counts))

    def mean(values: np.ndarray, sel: np.ndarray) -> float:
        return float(values[sel].mean()) if sel.any() else float("nan")

    cls = np.nonzero(present)[0]
    return {
        "pq": mean(pq_c, present),
        "sq": mean(sq_c, present),
        "rq": mean(rq_c, present),
        "pq_things": mean(pq_c, present & things),
        "pq_stuff": mean(pq_c, present & ~things),
        "pq_per_class": {int(c): float(pq_c[c]) for c in cls},
        "sq_per_class": {int(c): float(sq_c[c]) for c in cls},
        "rq_per_class": {int(c): float(rq_c[c]) for c in cls},
    }


def pq(pred_sem: np.ndarray, pred_inst: np.ndarray, gt_sem: np.ndarray, gt_inst: np.ndarray,
       thing_classes: Iterable[int], num_classes: int, ignore: int = IGNORE) -> dict:
    """Panoptic quality of one image: :func:`pq_from_counts` of :func:`pq_counts` (same arguments)."""
    thing_classes = tuple(thing_classes)
    counts = pq_counts(pred_sem, pred_inst, gt_sem, gt_inst, thing_classes, num_classes, ignore)
    return pq_from_counts(counts, thing_classes)


def objects_of_things(classes: np.ndarray, thing_classes: Iterable[int]) -> np.ndarray:
    """Object ids when only classes are known: each connected region of thing pixels is one object."""
    return ndi.label(np.isin(classes, list(thing_classes)))[0]


# --- training targets ----------------------------------------------------------------------------

class PanopticTargets(NamedTuple):
    """Dense targets of a batch, all float32 ``(N, c, H, W)`` on the targets' device."""

    center: torch.Tensor  # (N, 1, H, W) heatmap in 0..1
    center_weight: torch.Tensor  # (N, 1, H, W) 1 where the heatmap is known
    offset: torch.Tensor  # (N, 2, H, W) (dy, dx) in pixels from each thing pixel to its centre
    offset_weight: torch.Tensor  # (N, 1, H, W) 1 on thing pixels with an id


def targets(y: torch.Tensor, thing_classes: Iterable[int], sigma: float = 3.0) -> PanopticTargets:
    """Centre heatmap and offsets of a batch from ``y`` ``(N, 2, H, W)`` int64 (ids, classes).

    A thing object is one instance id's pixels whose class is a thing class; its centre is its
    centre of mass rounded to a pixel (of the visible part, for objects cut by the crop). The
    heatmap is the maximum of a Gaussian (``sigma`` px) per centre. Weights: the heatmap is
    unknown where the class or id is ``-1`` and on thing pixels without an id; the offsets are
    trained on thing pixels with an id only.
    """
    inst, sem = y[:, 0], y[:, 1]
    n, h, w = inst.shape
    dev = y.device
    thing_list = torch.as_tensor(sorted(int(c) for c in thing_classes), dtype=sem.dtype, device=dev)
    is_thing = torch.isin(sem, thing_list)
    on_obj = is_thing & (inst > 0)
    stride = int(inst.max().clamp(min=0)) + 1
    batch = torch.arange(n, device=dev).view(n, 1, 1).expand_as(inst)
    key = (batch * stride + inst)[on_obj]
    _, obj = torch.unique(key, return_inverse=True)
    n_obj = int(obj.max()) + 1 if obj.numel() else 0
    yy = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1).expand(n, h, w)
    xx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w).expand(n, h, w)
    area = torch.bincount(obj, minlength=n_obj).float()
    cy = torch.round(torch.bincount(obj, yy[on_obj], minlength=n_obj) / area.clamp(min=1))
    cx = torch.round(torch.bincount(obj, xx[on_obj], minlength=n_obj) / area.clamp(min=1))
    obj_batch = torch.zeros(n_obj, dtype=torch.long, device=dev).scatter_(0, obj, batch[on_obj])

    offset = torch.zeros(n, 2, h, w, device=dev)
    offset[:, 0][on_obj] = cy[obj] - yy[on_obj]
    offset[:, 1][on_obj] = cx[obj] - xx[on_obj]
    center = torch.zeros(n, 1, h, w, device=dev)
    gy = torch.exp(-((torch.arange(h, device=dev)[None] - cy[:, None]) ** 2) / (2 * sigma**2))
    gx = torch.exp(-((torch.arange(w, device=dev)[None] - cx[:, None]) ** 2) / (2 * sigma**2))
    for i in range(n):
        sel = obj_batch == i
        if sel.any():
            center[i, 0] = (gy[sel][:, :, None] * gx[sel][:, None, :]).amax(0)
    known = (sem >= 0) & (inst >= 0) & ~(is_thing & (inst == 0))
    return PanopticTargets(center, known[:, None].float(), offset, on_obj[:, None].float())


def maps_from_labels(semantic: np.ndarray, instances: np.ndarray, thing_classes: Iterable[int],
                     num_classes: int, sigma: float = 3.0) -> np.ndarray:
    """The "perfect" ``(K + 3, H, W)`` float32 maps of a labelled image (one-hot classes, heatmap,
    offsets): what a flawless model would output after :meth:`activate`. For tests and checks."""
    sem = np.asarray(semantic, np.int64)
    y = torch.from_numpy(np.stack([np.asarray(instances, np.int64), sem])[None])
    t = targets(y, thing_classes, sigma)
    onehot = (sem[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    return np.concatenate([onehot, t.center[0].numpy(), t.offset[0].numpy()])


# --- post-processing -----------------------------------------------------------------------------

def find_centers(heatmap: np.ndarray, *, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``heatmap`` (max-pool NMS over ``nms_kernel`` px) above ``threshold``, at
    most ``top_k``, strongest first; a plateau gives one centre.

    Returns:
        ``(n, 2)`` float positions (y, x) and their ``(n,)`` heatmap values.
    """
    peaks = (heatmap >= ndi.maximum_filter(heatmap, size=nms_kernel, mode="nearest")) & (heatmap > threshold)
    lab, n = ndi.label(peaks, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    pos = np.asarray(ndi.center_of_mass(peaks, lab, np.arange(1, n + 1)), np.float64).reshape(-1, 2)
    vals = np.asarray(ndi.maximum(heatmap, lab, np.arange(1, n + 1)), np.float64)
    order = np.argsort(-vals, kind="stable")[:top_k]
    return pos[order], vals[order]


def postprocess(maps: np.ndarray, thing_classes: Iterable[int], *, center_threshold: float = 0.1,
                nms_kernel: int = 7, top_k: int = 2000, min_size: int = 8
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Panoptic labels from blended maps ``(K + 3, H, W)`` (K class probabilities, centre heatmap
    in 0..1, offsets dy, dx in pixels).

    Each pixel takes its most probable class. Each thing pixel joins the centre (see
    :func:`find_centers`) nearest to where its offset points; an object's class is the majority
    class of its pixels (all its pixels take it), its score the heatmap peak times its pixels'
    mean probability of that class. Objects under ``min_size`` pixels, and thing pixels when no
    centre is found, fall back to their most probable stuff class with id 0.

    Returns:
        ``semantic`` (H, W) int64, ``instances`` (H, W) int32 ids 1..N (highest score first) and
        features ``{"index": ids, "class": class per id, "score": score per id}``.
    """
    maps = np.asarray(maps, np.float32)
    k = maps.shape[0] - 3
    if k < 1:
        raise ValueError(f"Panoptic maps need K class maps + 3, got {maps.shape[0]} channels.")
    probs, heat, off = maps[:k], maps[k], maps[k + 1:]
    things = _thing_lut(thing_classes, k)
    semantic = probs.argmax(0).astype(np.int64)
    thing_px = things[semantic]
    instances = np.zeros(semantic.shape, np.int32)
    centers, peak = find_centers(heat, threshold=center_threshold, nms_kernel=nms_kernel, top_k=top_k)
    ids, cls, score = [], [], []
    if len(centers) and thing_px.any():
        py, px = np.nonzero(thing_px)
        target = np.stack([py + off[0, py, px], px + off[1, py, px]], 1)
        nearest = cKDTree(centers).query(target)[1]
        votes = np.bincount(nearest * k + semantic[py, px], minlength=len(centers) * k).reshape(-1, k)
        for c in np.nonzero(votes.sum(1) >= max(min_size, 1))[0]:
            c_cls = int(votes[c].argmax())
            sel = nearest == c
            ids.append(c)
            cls.append(c_cls)
            score.append(float(peak[c] * probs[c_cls, py[sel], px[sel]].mean()))
        order = np.argsort(-np.asarray(score), kind="stable")
        lut = np.zeros(len(centers), np.int32)
        lut[np.asarray(ids, np.int64)[order]] = np.arange(1, len(ids) + 1)
        cls = [cls[i] for i in order]
        score = [score[i] for i in order]
        instances[py, px] = lut[nearest]
        obj_cls = np.concatenate([[0], np.asarray(cls, np.int64)])
        has = instances > 0
        semantic[has] = obj_cls[instances[has]]
    orphan = thing_px & (instances == 0)
    if orphan.any() and (~things).any():
        stuff = np.nonzero(~things)[0]
        semantic[orphan] = stuff[probs[stuff][:, orphan].argmax(0)]
    features = {
        "index": np.arange(1, len(cls) + 1, dtype=np.int32),
        "class": np.asarray(cls, np.int64),
        "score": np.asarray(score, np.float32),
    }
    return semantic, instances, features
