"""The training loop: random crops, augmentation, validation split, LR schedule, early stopping,
time budget, cancel, atomic best-model checkpoints. Used for training from scratch and fine-tuning.

No Qt or napari here: :func:`train` is a generator yielding :class:`~.progress.Progress` once per
step and returning a :class:`TrainResult` whose model is the best one on the validation split.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .inference import pick_device, predict_probs
from .io import SegModel, save_model
from .preprocess import LabelMap, infer_axes, normalize, to_slices
from .progress import Progress, Work, drive
from .models.base import DenseHeads, ObjectModel, encoder_of
from .tasks import instance, semantic

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings; the defaults suit a few to a few hundred images on a CPU or a GPU.

    Attributes:
        epochs: Upper limit on epochs.
        time_budget: Wall-clock limit in seconds (``None``: none). Training stops there and keeps the best model.
        steps_per_epoch: Optimiser steps between validations (``None``: from the data size, 10..100).
        batch_size: Crops per step (at least 2: batch norm needs two samples).
        patch_size: Crop edge in pixels (Y and X); ``None``: the model's own default (256 for most,
            128 for the object models, which then take more steps in the same time).
        patch_size_z: Crop depth for native 3D models (their batches are half ``batch_size``); ``None``:
            the model's default (32).
        lr: Peak learning rate (AdamW; linear warm-up then cosine decay over whichever of the epoch
            limit and the time budget binds first); ``None``: the model's own default (2e-3 for most).
        patience: Epochs without validation improvement before stopping early (0: never).
        val_fraction: Share of images (or slices) held out; with one image, the bottom rows.
        augment: Random flips, 90-degree rotations, scaling, elastic deformation (2D), gamma, gain and
            offset, and noise.
        device: ``"auto"`` (CUDA, MPS, CPU), or a torch device string.
        amp: Mixed precision on CUDA.
        seed: Seed of crops, augmentation and initial split.
        freeze_encoder: Train only what follows the encoder (:func:`~.models.base.encoder_of`): for
            fine-tuning on very few images. The encoder's batch-norm statistics still adapt to the new images.
    """

    epochs: int = 100
    time_budget: float | None = None
    steps_per_epoch: int | None = None
    batch_size: int = 4
    patch_size: int | None = None
    patch_size_z: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    patience: int = 20
    val_fraction: float = 0.2
    augment: bool = True
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    freeze_encoder: bool = False


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The best model on the validation split (its card carries the training summary and metrics).
        history: One dict per epoch: ``epoch``, ``step``, ``time``, ``train_loss``, ``val_loss``,
            ``val_score`` (mean IoU, AP50 or PQ by task) and the task's other ``val_*`` metrics.
        stopped: Why training ended: ``"epochs"``, ``"time budget"``, ``"early stopping"`` or ``"cancelled"``.
    """

    model: SegModel
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "epochs"


@dataclass
class _Sample:
    x: np.ndarray  # (C, H, W) or, for native 3D models, (C, Z, H, W) float32, normalised
    y: np.ndarray  # (H, W) or (Z, H, W) int64 classes or IGNORE; (2, ...) ids + classes for object/panoptic models
    ids: np.ndarray | None = None  # object ids (instance and panoptic tasks), for validation

    @property
    def classes(self) -> np.ndarray:
        """The class-index channel of the targets (IGNORE where unknown)."""
        return self.y[1] if self.y.ndim == self.x.ndim else self.y


def _target_layout(model: SegModel) -> str:
    """How a model's targets look: ``"classes"`` (per-pixel classes, incl. unet-instance's 3 classes)
    or ``"ids+classes"`` (object and dense-heads models: :mod:`~.models.base`)."""
    return "ids+classes" if isinstance(model.module, (ObjectModel, DenseHeads)) else "classes"


def prepare_samples(
    model: SegModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    rgb: bool | None = None,
    instances: Sequence[np.ndarray] | None = None,
) -> list[_Sample]:
    """Normalised training samples with targets: for 2D models one per image or volume slice, for
    native 3D models one per volume (a 2D image is a one-slice volume).

    What ``labels`` (and ``instances``) mean depends on the model's task: semantic models take class
    values; instance models take object ids in ``labels`` (one class), or class values in ``labels``
    and object ids in ``instances`` (a class per object); panoptic models take class values in
    ``labels`` and object ids of the thing classes in ``instances`` (when ``None``, each connected
    region of a thing class is one object).

    Raises:
        ValueError: counts or shapes differ, or labels hold values the model has no class for.
    """
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images; give one label image per image.")
    if instances is not None and len(instances) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(instances)} instance images; give one per image.")
    if not images:
        raise ValueError("No training images were given.")
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    lmap = LabelMap.of_card(model.card)
    kind = model.card.get("kind")
    layout = _target_layout(model)
    sparse_ids = model.card.get("unannotated_value") is not None
    three_d = model.card.get("spatial_dims", 2) == 3
    samples = []
    for i, (img, lab, name) in enumerate(zip(images, labels, names)):
        axes = infer_axes(np.shape(img), rgb)
        want = axes.spatial_shape(np.shape(img))
        inst = None if instances is None or instances[i] is None else np.asarray(instances[i])
        for what, arr in (("Labels", lab), ("Instance labels", inst)):
            if arr is not None and tuple(np.shape(arr)) != want:
                raise ValueError(
                    f"{what} of {name!r} are {'x'.join(map(str, np.shape(arr)))} but the image is "
                    f"{'x'.join(map(str, want))}; pick the labels that belong to this image."
                )
        lab = np.asarray(lab)
        if kind == "instance" and inst is None:  # one class: labels are the object ids
            inst, cls_values = lab, None
        else:
            cls_values = lab
        unknown = [] if cls_values is None else lmap.unknown_values(cls_values)
        if unknown:
            raise ValueError(
                f"Labels of {name!r} hold values {unknown[:10]} that model {model.name!r} has no class for "
                f"(its label values are {lmap.values}). Train a new model, or relabel those pixels."
            )
        x = normalize(to_slices(img, axes, model.card["in_channels"]), model.card.get("normalization"))
        spatial = x.shape[2:]
        if kind == "panoptic" and inst is None:
            from .tasks import panoptic

            inst = panoptic.objects_of_things(lmap.to_classes(cls_values), model.card["build"].get("thing_classes", (1,)))
        ids = None if inst is None else np.asarray(inst).astype(np.int64).reshape((-1, *spatial))
        unlabelled = None
        if kind == "instance" and sparse_ids:  # the sparse rule for objects: 0 not annotated, 1 background
            unlabelled = ids == 0
            ids = np.where(ids >= 2, ids - 1, np.where(unlabelled, semantic.IGNORE, 0))
        if layout == "ids+classes":
            cls = (ids > 0).astype(np.int64) if cls_values is None else lmap.to_classes(cls_values).reshape((-1, *spatial))
            if kind == "instance" and cls_values is not None:
                cls = np.where(ids > 0, cls, np.where(cls == semantic.IGNORE, semantic.IGNORE, 0))
            y = np.stack([ids, cls], axis=1)  # (S, 2, H, W)
        elif kind == "instance":  # background / interior / boundary targets, per 2D slice or per volume
            known = np.maximum(ids, 0)
            y = instance.targets(known) if three_d else np.stack([instance.targets(sl) for sl in known])
            if unlabelled is not None:
                y[unlabelled] = semantic.IGNORE
        else:
            y = lmap.to_classes(cls_values).reshape((-1, *spatial))
        if three_d:
            y3 = np.moveaxis(y, 0, 1) if y.ndim == 4 else y
            samples.append(_Sample(np.ascontiguousarray(np.moveaxis(x, 0, 1)), np.ascontiguousarray(y3), ids))
        else:
            samples += [_Sample(xs, ys, None if ids is None else ids[j]) for j, (xs, ys) in enumerate(zip(x, y))]
    return samples


def split_samples(samples: list[_Sample], fraction: float, rng: np.random.Generator) -> tuple[list[_Sample], list[_Sample], str]:
    """Hold out a validation part: whole images when there are several, else the bottom rows of the one."""
    if len(samples) >= 2:
        n_val = min(len(samples) - 1, max(1, round(fraction * len(samples))))
        order = rng.permutation(len(samples))
        return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]], f"{n_val} of {len(samples)} images"
    s = samples[0]
    h = s.y.shape[-2]
    cut = int(round(h * (1 - fraction)))
    if h >= 64 and h - cut >= 16:
        def part(rows: slice) -> _Sample:
            return _Sample(s.x[..., rows, :], s.y[..., rows, :], None if s.ids is None else s.ids[..., rows, :])

        return [part(slice(0, cut))], [part(slice(cut, None))], f"bottom {h - cut} rows of the one image"
    return [s], [s], "none held out (one small image): validated on the training image"


def _pad_to(s: _Sample, patch: tuple[int, ...]) -> _Sample:
    """Pad a sample at the end of each spatial axis up to ``patch``; padded labels are ``IGNORE``."""
    spatial = s.x.shape[1:]
    extra = [max(0, p - n) for p, n in zip(patch, spatial)]
    if not any(extra):
        return s
    mode = "reflect" if all(e < n for e, n in zip(extra, spatial)) else "edge"
    x = np.pad(s.x, [(0, 0)] + [(0, e) for e in extra], mode=mode)
    lead = [(0, 0)] * (s.y.ndim - len(spatial))
    y = np.pad(s.y, lead + [(0, e) for e in extra], constant_values=semantic.IGNORE)
    return _Sample(x, y, s.ids)


#: Share of 2D crops deformed elastically (each costs about as much as a tenth of a CPU training step).
ELASTIC_P = 0.3


def elastic(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, grid: int = 3,
            std_px: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic deformation as in the U-Net paper: random displacements on a coarse ``grid`` x ``grid``
    grid (``std_px`` pixels standard deviation), smoothly interpolated, applied to the image
    (bilinear) and the targets (nearest; pixels from outside become ``IGNORE``). The warping is
    torchvision's (``transforms.v2.functional.elastic``), so image and mask stay aligned."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    coarse = torch.from_numpy(rng.standard_normal((1, 2, grid, grid)).astype(np.float32))
    coarse *= torch.tensor([2 * std_px / w, 2 * std_px / h]).view(1, 2, 1, 1)  # pixels -> [-1, 1] grid units
    disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)[None]
    xo = TF.elastic(tv_tensors.Image(x), disp, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    yo = TF.elastic(tv_tensors.Mask(y if y.ndim == 3 else y[None]), disp, fill=semantic.IGNORE)
    return xo.as_subclass(torch.Tensor), (yo if y.ndim == 3 else yo[0]).as_subclass(torch.Tensor)


def _crop_batch(train: list[_Sample], patch: tuple[int, ...], n: int, rng: np.random.Generator,
                augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random crops of size ``patch`` (2D ``(p, p)`` or 3D ``(pz, p, p)``), augmented."""
    weights = np.array([s.x[0].size for s in train], dtype=np.float64)
    nd = len(patch)
    xs, ys = [], []
    for i in rng.choice(len(train), size=n, p=weights / weights.sum()):
        s = train[i]
        spatial = s.x.shape[1:]
        size = list(patch)
        if augment and nd == 2:  # scale augmentation: crop a larger or smaller window, resize to the patch
            c = int(np.clip(round(patch[0] * math.exp(rng.uniform(-0.25, 0.25))), 16, min(spatial)))
            size = [c, c]
        starts = [int(rng.integers(0, dim - c + 1)) for dim, c in zip(spatial, size)]
        window = tuple(slice(a, a + c) for a, c in zip(starts, size))
        x = torch.from_numpy(s.x[(slice(None), *window)].copy())
        y = torch.from_numpy(s.y[(Ellipsis, *window)].copy())
        if tuple(size) != tuple(patch):
            x = F.interpolate(x[None], size=patch, mode="bilinear", align_corners=False)[0]
            lead = y.ndim > nd  # (2, ...) ids + classes
            y = F.interpolate((y[None] if lead else y[None, None]).float(), size=patch, mode="nearest")[0].long()
            y = y if lead else y[0]
        if augment:
            for axis in range(-nd, 0):
                if rng.random() < 0.5:
                    x, y = x.flip(axis), y.flip(axis)
            if patch[-1] == patch[-2]:
                k = int(rng.integers(4))
                x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
            if nd == 2 and rng.random() < ELASTIC_P:
                x, y = elastic(x, y, rng)
            if rng.random() < 0.5:  # gamma, within each channel's own range
                lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
                hi = x.amax(dim=tuple(range(1, x.ndim)), keepdim=True)
                g = float(math.exp(rng.uniform(-0.4, 0.4)))
                x = lo + (hi - lo) * ((x - lo) / (hi - lo + 1e-6)).clamp(0, 1) ** g
            shape = (x.shape[0],) + (1,) * nd
            gain = torch.from_numpy(rng.uniform(0.75, 1.33, shape).astype(np.float32))
            shift = torch.from_numpy(rng.uniform(-0.15, 0.15, shape).astype(np.float32))
            x = x * gain + shift
            if rng.random() < 0.5:
                x = x + float(rng.uniform(0, 0.08)) * torch.randn(x.shape)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def evaluate_samples(
    model: SegModel, samples: list[_Sample], device: torch.device, amp: bool, tile: int | tuple[int, ...] = 512,
) -> dict[str, Any]:
    """Validation loss and the task's metrics of ``model`` over whole samples (tiled, as at inference).

    Returns the task's metrics (semantic: ``mean_iou``, ``dice``, ...; instance: ``ap50``, ...;
    panoptic: ``pq``, ...), ``loss`` (NaN for object models, whose loss needs training mode) and
    ``score``, the one number that picks the best model: mean IoU, AP50 or PQ.
    """
    from .inference import segment_slice

    module, card = model.module, model.card
    k, div, kind = card["num_classes"], max(1, card.get("divisible_by", 1)), card.get("kind")
    was_training = module.training
    module.eval()
    cm = np.zeros((k, k), np.int64)
    losses: list[float] = []
    ious: list[np.ndarray] = []
    n_pred = n_true = 0
    pq_counts = None
    for s in samples:
        if isinstance(module, ObjectModel):
            seg = drive(segment_slice(model, s.x, tile=tile, device=device, amp=amp))
            pred_ids = seg.instances
        else:
            channels = k + (3 if kind == "panoptic" else 0)
            probs = drive(predict_probs(module, s.x, num_classes=channels, tile=tile, divisible_by=div,
                                        device=device, amp=amp))
            cls = s.classes
            valid = cls != semantic.IGNORE
            if valid.any():
                p = np.clip(probs[:k][:, valid], 1e-7, 1.0)
                losses.append(float(-np.log(p[cls[valid], np.arange(valid.sum())]).mean()))
            if kind == "semantic":
                cm += semantic.confusion(semantic.postprocess(probs), cls, k)
                continue
            if kind == "panoptic":
                from .tasks import panoptic

                things = tuple(card["build"].get("thing_classes", (1,)))
                sem, pred_ids, _ = panoptic.postprocess(probs, things)
                c = panoptic.pq_counts(sem, pred_ids, cls, s.ids, things, k)
                pq_counts = c if pq_counts is None else pq_counts + c
                continue
            pred_ids = instance.postprocess(probs)
        known = s.ids >= 0
        gt = np.where(known, s.ids, 0)
        pred_ids = np.where(known, pred_ids, 0)
        m = instance.metrics(pred_ids, gt)
        ious.append(instance.match(pred_ids, gt))
        n_pred, n_true = n_pred + m["n_pred"], n_true + m["n_true"]
    module.train(was_training)
    if kind == "semantic":
        out = semantic.metrics_from_confusion(cm)
        out["score"] = out["mean_iou"] or 0.0
    elif kind == "panoptic":
        from .tasks import panoptic

        out = panoptic.pq_from_counts(pq_counts, card["build"].get("thing_classes", (1,)))
        out["score"] = out["pq"] or 0.0
    else:
        out = instance.metrics_from_matches(np.concatenate(ious) if ious else np.zeros(0), n_pred, n_true)
        out["score"] = out["ap50"]
    out["loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


def _loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss by the model's contract (:mod:`~.models.base`)."""
    if isinstance(module, ObjectModel):
        return module.loss(x, y)
    if isinstance(module, DenseHeads):
        return module.loss_from_output(module(x), y)
    return semantic.loss_fn(module(x), y)


def _training_defaults(card: dict[str, Any]) -> dict[str, Any]:
    """The registry's training defaults of the card's architecture (e.g. a smaller crop for object models)."""
    from .models import get_spec

    try:
        return dict(get_spec(card["architecture"]).training)
    except KeyError:
        return {}


SCORE_NAMES = {"semantic": "mean IoU", "instance": "AP50", "panoptic": "PQ"}
SCORE_KEYS = {"semantic": "mean_iou", "instance": "ap50", "panoptic": "pq"}


def score_of(card: dict[str, Any]) -> tuple[str, float] | None:
    """The task's validation score recorded in a model card, e.g. ``("AP50", 0.83)``; ``None`` if untrained."""
    kind = card.get("kind", "semantic")
    value = (card.get("metrics") or {}).get(SCORE_KEYS.get(kind, ""))
    return (SCORE_NAMES[kind], float(value)) if isinstance(value, (int, float)) else None


def train(
    model: SegModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    rgb: bool | None = None,
    instances: Sequence[np.ndarray] | None = None,
    cancel: Callable[[], bool] | None = None,
    checkpoint: str | Path | None = None,
) -> Work[TrainResult]:
    """Train ``model`` in place on image/label pairs and return the best version.

    Args:
        model: A new model (:func:`~.io.new_model`) or a loaded one to fine-tune. Its card's
            ``label_values`` define the classes; labels must use only those values.
        images: Arrays ``(Y, X)``, ``(Y, X, 3)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3)``; volumes train slice by slice.
        labels: One label array per image, of the image's spatial shape, holding the user's values.
        config: :class:`TrainConfig`; defaults when ``None``.
        names: Names for error messages and the training summary.
        cancel: Polled every step; when it returns True, training stops and the best model so far is returned.
        checkpoint: A folder the best model is saved to (atomically) at every improvement, so a crash loses nothing.

    Yields:
        :class:`Progress` per step (``metrics["loss"]``) and after each validation (``val_*`` metrics).

    Returns:
        :class:`TrainResult`.
    """
    cfg = config or TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    card = model.card
    div = max(1, card.get("divisible_by", 1))
    score_name = SCORE_NAMES.get(card.get("kind", "semantic"), "score")
    samples = prepare_samples(model, images, labels, names, rgb, instances)
    train_s, val_s, val_note = split_samples(samples, cfg.val_fraction, rng)
    three_d = card.get("spatial_dims", 2) == 3
    spec_training = _training_defaults(card)
    patch_size = cfg.patch_size or spec_training.get("patch_size", 256)
    peak_lr = cfg.lr or spec_training.get("lr", 2e-3)
    p = min(patch_size, max(max(s.x.shape[-2:]) for s in train_s))
    p = max(div, -(-p // div) * div)
    patch: tuple[int, ...] = (p, p)
    batch_size = max(2, cfg.batch_size)  # batch norm in pooling branches (PSPNet, DeepLab) needs two samples
    val_tile: int | tuple[int, ...] = 512
    if three_d:
        pz_cfg = cfg.patch_size_z or spec_training.get("patch_size_z", 32)
        pz = min(pz_cfg, max(s.x.shape[1] for s in train_s))
        patch, batch_size, val_tile = (pz, p, p), max(2, cfg.batch_size // 2), (2 * pz_cfg, 256, 256)
    train_s = [_pad_to(s, patch) for s in train_s]
    train_px = sum(s.y.size for s in train_s)
    spe = cfg.steps_per_epoch or int(np.clip(math.ceil(train_px / (batch_size * np.prod(patch))), 10, 100))
    total = cfg.epochs * spe

    module = model.module.to(device).train()
    params = list(module.parameters())
    if cfg.freeze_encoder:
        enc = encoder_of(module)
        if enc is None:
            raise ValueError(f"Model {model.name!r} has no separate encoder to freeze; train it whole.")
        frozen = {id(p) for p in enc.parameters()}
        for p_ in enc.parameters():
            p_.requires_grad_(False)
        params = [p_ for p_ in params if id(p_) not in frozen]
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    t0 = time.monotonic()
    best_iou, best_state, best_metrics, best_epoch = -1.0, None, None, 0
    history: list[dict[str, float]] = []
    stopped, step, epoch = "epochs", 0, 0
    running: list[float] = []
    parent_val = None
    if card.get("parent"):  # fine-tuning: score the starting model on the same validation images first
        parent_val = evaluate_samples(model, val_s, device, use_amp, val_tile)
        yield Progress(0, total, f"starting model: {score_name} {parent_val['score']:.3f} on the validation images",
                       {"parent_score": parent_val["score"]})

    def frac() -> float:
        f = step / total
        if cfg.time_budget:
            f = max(f, (time.monotonic() - t0) / cfg.time_budget)
        return min(f, 1.0)

    while epoch < cfg.epochs and stopped == "epochs":
        epoch += 1
        epoch_start = step
        for _ in range(spe):
            if cancel is not None and cancel():
                stopped = "cancelled"
                break
            if cfg.time_budget and time.monotonic() - t0 > cfg.time_budget:
                stopped = "time budget"
                break
            # warm-up: at least 10 steps, at most 3 % of the steps or 5 % of the time budget
            warm = min(1.0, (step + 1) / 10, max((step + 1) / max(1, total * 0.03), frac() / 0.05))
            lr = peak_lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac())))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = _crop_batch(train_s, patch, batch_size, rng, cfg.augment)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = _loss(module, x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            running.append(float(loss.detach()))
            yield Progress(step, total, f"epoch {epoch}/{cfg.epochs} · loss {running[-1]:.3f}", {"loss": running[-1], "lr": lr})
        if step == epoch_start and (best_state is not None or not running):
            break  # stopped before this epoch took a step: the last validation still holds
        val = evaluate_samples(model, val_s, device, use_amp, val_tile)
        row = {
            "epoch": epoch, "step": step, "time": time.monotonic() - t0,
            "train_loss": float(np.mean(running[-spe:])), "val_loss": val["loss"],
            "val_score": val["score"],
        }
        for key in ("mean_iou", "dice", "ap50", "ap50_95", "pq", "sq", "rq"):
            if key in val:
                row[f"val_{key}"] = val[key] or 0.0
        history.append(row)
        improved = val["score"] > best_iou
        if improved:
            best_iou, best_epoch = val["score"], epoch
            best_state = copy.deepcopy({n: t.detach().cpu() for n, t in module.state_dict().items()})
            best_metrics = val
            if checkpoint is not None:
                _annotate(model, cfg, samples, train_s, val_note, history, best_epoch, best_metrics, "running", step, t0)
                snapshot = SegModel(copy.deepcopy(module).cpu(), model.card)
                snapshot.module.load_state_dict(best_state)
                save_model(snapshot, checkpoint)
        yield Progress(
            step, total,
            f"epoch {epoch}: val loss {val['loss']:.3f} · {score_name} {val['score']:.3f}" + (" (best)" if improved else ""),
            {k2: v for k2, v in row.items() if isinstance(v, float)},
        )
        if cfg.patience and epoch - best_epoch >= cfg.patience and stopped == "epochs":
            stopped = "early stopping"
    if best_state is not None:
        module.load_state_dict(best_state)
    for p_ in module.parameters():  # a frozen encoder is frozen for this training only
        p_.requires_grad_(True)
    module.eval()
    _annotate(model, cfg, samples, train_s, val_note, history, best_epoch, best_metrics, stopped, step, t0)
    if parent_val is not None and best_metrics is not None:
        model.card["comparison"] = {
            "metric": score_name, "parent": parent_val["score"], "new": best_metrics["score"],
            "better": bool(best_metrics["score"] >= parent_val["score"]), "validation": val_note,
            "parent_name": card["parent"].get("name"), "parent_path": card["parent"].get("path"),
        }
    return TrainResult(model, history, stopped)


def _annotate(model: SegModel, cfg: TrainConfig, samples: list, train_s: list, val_note: str, history: list,
              best_epoch: int, metrics: dict | None, stopped: str, step: int, t0: float) -> None:
    """Write the training summary and validation metrics into the model's card."""
    prev = model.card.get("training")
    model.card["training"] = {
        "samples": len(samples),
        "train_samples": len(train_s),
        "validation": val_note,
        "pixels": int(sum(s.x[0].size for s in samples)),
        "labelled_pixels": int(sum((s.classes != semantic.IGNORE).sum() for s in samples)),
        "epochs": len(history),
        "best_epoch": best_epoch,
        "steps": step,
        "seconds": round(time.monotonic() - t0, 1),
        "stopped": stopped,
        "config": asdict(cfg),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "history": history,
        "previous": {k: v for k, v in prev.items() if k != "history"} if prev else None,
    }
    model.card["metrics"] = metrics
