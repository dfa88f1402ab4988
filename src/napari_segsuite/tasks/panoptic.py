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

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from . import register_task
from .base import IGNORE, UNANNOTATED, Segmentation, Targets, Task, check_ids
from .pq import FN, FP, IOU_SUM, TP, _thing_lut, pq, pq_counts, pq_from_counts

if TYPE_CHECKING:
    from ..card import ModelCard
    from ..model_files import SegModel
    from ..models.registry import ModelSpec

__all__ = [
    "FN",
    "FP",
    "IGNORE",
    "IOU_SUM",
    "TP",
    "PanopticTask",
    "PQMetric",
    "activate",
    "find_centers",
    "loss",
    "maps_from_labels",
    "objects_of_things",
    "postprocess",
    "pq",
    "pq_counts",
    "pq_from_counts",
    "targets",
]


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


def maps_from_labels(
    semantic: np.ndarray, instances: np.ndarray, thing_classes: Iterable[int], num_classes: int, sigma: float = 3.0
) -> np.ndarray:
    """The "perfect" ``(K + 3, H, W)`` float32 maps of a labelled image (one-hot classes, heatmap,
    offsets): what a flawless model would output after :meth:`activate`. For tests and checks."""
    sem = np.asarray(semantic, np.int64)
    y = torch.from_numpy(np.stack([np.asarray(instances, np.int64), sem])[None])
    t = targets(y, thing_classes, sigma)
    onehot = (sem[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    return np.concatenate([onehot, t.center[0].numpy(), t.offset[0].numpy()])


# --- post-processing -----------------------------------------------------------------------------


def find_centers(
    heatmap: np.ndarray, *, threshold: float = 0.1, nms_kernel: int = 7, top_k: int = 200
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


def postprocess(
    maps: np.ndarray,
    thing_classes: Iterable[int],
    *,
    center_threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 2000,
    min_size: int = 8,
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
    probs, heat, off = maps[:k], maps[k], maps[k + 1 :]
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
    features: dict[str, np.ndarray] = {
        "index": np.arange(1, len(cls) + 1, dtype=np.int32),
        "class": np.asarray(cls, np.int64),
        "score": np.asarray(score, np.float32),
    }
    return semantic, instances, features


# --- loss ----------------------------------------------------------------------------------------

#: Width (px) of the Gaussian around each centre in the heatmap target.
SIGMA = 3.0
#: Weights of the semantic, heatmap and offset losses. The paper's 1, 200, 0.01 are for offsets of
#: hundreds of pixels; objects here are tens of pixels across.
LOSS_WEIGHTS = (1.0, 200.0, 0.2)
#: Weight of a soft Dice term added to the semantic cross-entropy.
DICE_WEIGHT = 0.5


def activate(out: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Raw ``(N, K + 3, H, W)`` output to blendable maps: softmax over the K class logits, sigmoid on
    the centre heatmap, offsets unchanged."""
    k = num_classes
    out = out.float()
    return torch.cat([out[:, :k].softmax(1), out[:, k : k + 1].sigmoid(), out[:, k + 1 :]], 1)


def loss(out: torch.Tensor, y: torch.Tensor, num_classes: int, thing_classes: Iterable[int]) -> torch.Tensor:
    """Cross-entropy (+ Dice) on classes, weighted MSE on the heatmap, L1 on thing offsets, of raw
    output ``out`` ``(N, K + 3, H, W)`` against targets ``y`` ``(N, 2, H, W)`` (ids, classes)."""
    k = num_classes
    _thing_lut(thing_classes, k)  # thing classes must be classes
    y = y.long()
    t = targets(y, thing_classes, SIGMA)
    logits = out[:, :k].float()
    sem = y[:, 1]
    ce = F.cross_entropy(logits, sem, ignore_index=IGNORE) if (sem != IGNORE).any() else logits.sum() * 0
    if DICE_WEIGHT:
        ce = ce + DICE_WEIGHT * _dice(logits, sem)
    heat = out[:, k : k + 1].float().sigmoid()
    mse = (t.center_weight * (heat - t.center) ** 2).sum() / t.center_weight.sum().clamp(min=1)
    l1 = (t.offset_weight * (out[:, k + 1 :].float() - t.offset).abs()).sum() / t.offset_weight.sum().clamp(min=1)
    w_sem, w_center, w_offset = LOSS_WEIGHTS
    return w_sem * ce + w_center * mse + w_offset * l1


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (known pixels only)."""
    k = logits.shape[1]
    known = (target != IGNORE)[:, None].float()
    probs = logits.softmax(1) * known
    onehot = F.one_hot(target.clamp(min=0), k).movedim(-1, 1).float() * known
    dims = (0, 2, 3)
    inter, total = (probs * onehot).sum(dims), (probs + onehot).sum(dims)
    present = onehot.sum(dims) > 0
    if not present.any():
        return logits.sum() * 0
    return 1 - (2 * inter[present] / total[present].clamp(min=1e-6)).mean()


# --- the task ------------------------------------------------------------------------------------


class PQMetric:
    """Panoptic counts accumulated over images (:func:`pq_counts`), reported by :func:`pq_from_counts`."""

    def __init__(self, num_classes: int, thing_classes: Sequence[int]) -> None:
        self.k, self.things = num_classes, tuple(thing_classes)
        self.counts = np.zeros((num_classes, 4))

    def update(self, pred: Segmentation, truth: Targets) -> None:
        if pred.semantic is None or pred.instances is None or truth.classes is None or truth.ids is None:
            raise ValueError("Panoptic quality needs classes and object ids, predicted and true.")
        self.counts += pq_counts(pred.semantic, pred.instances, truth.classes, truth.ids, self.things, self.k)

    def compute(self) -> dict[str, Any]:
        out = pq_from_counts(self.counts, self.things)
        out["score"] = 0.0 if np.isnan(out["pq"]) else out["pq"]
        return out


class PanopticTask(Task):
    """Stuff and things: a class for every pixel and an id for every countable object
    (class maps + centre heatmap + offsets, grouped bottom-up)."""

    name = "panoptic"
    score_name = "PQ"
    score_key = "pq"
    takes_objects = True
    gives_ids = True

    def new_model(
        self,
        spec: ModelSpec,
        labels: Sequence[np.ndarray],
        *,
        in_channels: int,
        sparse: bool,
        instances: Sequence[np.ndarray] | None,
        things: Sequence[int] | None,
        build: dict[str, Any],
        ignore_value: int | None = None,
    ) -> SegModel:
        import logging

        from ..model_files import new_model
        from ..preprocess import LabelMap

        if sparse:
            raise ValueError("Sparse labels are not supported for panoptic models yet; label whole images.")
        lmap = LabelMap.from_labels(list(labels), ignore=ignore_value)
        if instances is not None:
            check_ids(instances)
        if things is None:  # the classes found under objects; without objects every class but 0
            found: set[int] = set()
            objs: Sequence[np.ndarray | None] = instances if instances is not None else [None] * len(labels)
            for lab, inst in zip(labels, objs):
                if inst is not None:
                    found |= {int(v) for v in np.unique(np.asarray(lab)[np.asarray(inst) > 0])}
            things = sorted(found - {0, ignore_value}) or [v for v in lmap.values if v != 0]
            logging.getLogger(__name__).info("Thing classes (label values): %s; the others are stuff", things)
        missing = sorted(set(things) - set(lmap.values))
        if missing:
            raise ValueError(f"Thing classes {missing} do not occur in the labels (values {lmap.values}).")
        return new_model(
            spec.name,
            label_values=lmap.values,
            in_channels=in_channels,
            thing_classes=[lmap.values.index(v) for v in things],
            ignore_value=ignore_value,
            **build,
        )

    def prepare_finetune(self, model: SegModel, sparse: bool) -> None:
        if sparse and model.card.unannotated_value != UNANNOTATED:
            raise ValueError("Sparse labels are not supported for panoptic models yet.")

    def output_channels(self, card: ModelCard) -> int:
        return card.num_classes + 3

    def targets(
        self,
        model: SegModel,
        labels: np.ndarray,
        instances: np.ndarray | None,
        *,
        per_slice: bool,
        name: str,
        strict: bool = True,
    ) -> Targets:
        from .semantic import classes_of

        cls = classes_of(model, labels, name, strict)
        inst = objects_of_things(cls, model.card.thing_classes) if instances is None else instances
        ids = np.asarray(inst).astype(np.int64)
        return Targets(y=np.stack([ids, cls]), classes=cls, ids=ids)

    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, card: ModelCard) -> torch.Tensor:
        return loss(module(x), y, card.num_classes, card.thing_classes)

    def activate(self, out: torch.Tensor, card: ModelCard) -> torch.Tensor:
        return activate(out, card.num_classes)

    def unmirror(self, maps: torch.Tensor, dims: tuple[int, ...], card: ModelCard) -> torch.Tensor:
        """Mirror back, and turn the offsets' sign along each mirrored axis (dy for Y, dx for X)."""
        out = maps.flip(dims).clone()
        k = card.num_classes
        for d in dims:
            axis = d % maps.ndim  # 2: Y, 3: X of (N, M, H, W)
            out[:, k + 1 + axis - 2] *= -1
        return out

    def untranspose(self, maps: torch.Tensor, card: ModelCard) -> torch.Tensor:
        """Swap Y and X back, and the offsets' two components with them (dy is the swapped input's dx)."""
        out = maps.transpose(-2, -1).clone()
        k = card.num_classes
        out[:, k + 1], out[:, k + 2] = out[:, k + 2].clone(), out[:, k + 1].clone()
        return out

    def postprocess(self, maps: np.ndarray, card: ModelCard) -> Segmentation:
        sem, ids, feats = postprocess(maps, card.thing_classes)
        return Segmentation(semantic=sem, instances=ids, features=feats)

    def metric(self, card: ModelCard) -> PQMetric:
        return PQMetric(card.num_classes, card.thing_classes)

    def report(self, metrics: dict[str, Any], card: ModelCard) -> dict[str, Any]:
        out = dict(metrics)
        for key in ("pq_per_class", "sq_per_class", "rq_per_class"):  # by the user's label values
            out[key] = {int(card.label_values[c]): v for c, v in metrics[key].items()}
        return out


register_task(PanopticTask())
