"""The training loop: validation split, LR schedule, early stopping, time budget, cancel, atomic
best-model checkpoints. Used for training from scratch and fine-tuning. Samples and targets come
from :mod:`.samples`, crops and augmentation from :mod:`.augment`, scores from :mod:`.evaluation`;
what the loss and the targets mean is the task's (:mod:`.tasks`).

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import Batches, ClassIndex, background_batches, batch_threads, crop_batch
from .averaging import WeightAverage, refresh_norm_stats
from .checks import check_learnable, check_train_config
from .distributed import Sync, world_size
from .evaluation import calibrate_inference, calibration_helpers, evaluate_samples
from .geometry import describe_geometry, settle_geometry
from .grid import downsample_volume
from .heap import trim_heap
from .inference import pick_device
from .layout import autocast_dtype
from .model_files import SegModel, save_model
from .models.base import ObjectModel, encoder_of
from .plan import TrainPlan, plan
from .position import input_channels
from .pretrain import pretrain_share
from .progress import Progress, Work
from .samples import Sample, pad_to, prepare_samples, split_samples, unlabelled_inputs
from .tasks import IGNORE, get_task, score_of
from .train_config import TrainConfig

log = logging.getLogger(__name__)


#: Epochs without improvement before stopping early, where there is no time budget and no ``patience``.
DEFAULT_PATIENCE = 20

#: Under a time budget, early stopping (a ``patience`` given) waits until this share of the budget has passed.
EARLY_STOP_AFTER = 0.5

#: Under a time budget, validation takes at most this share of the time (it is skipped at the end of
#: an epoch until enough training time has passed since the last one).
VAL_SHARE = 0.05


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
    unlabelled: Sequence[np.ndarray] | None = None,
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
        checkpoint: A folder the best model is saved to (atomically) at every improvement, so a crash loses
            nothing, and the returned model at the end (by rank 0 alone under torchrun).
        unlabelled: Images without labels, used by self-supervised pre-training (``config.pretrain``).

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
    task = get_task(card.kind)
    score_name = task.score_name
    check_train_config(cfg)
    if cfg.voxel_size is not None:  # before the targets: 3D object rings follow it
        card.voxel_size = [float(v) for v in cfg.voxel_size]
    factor = settle_geometry(model, images, labels, cfg, device.type)  # orientation, place, grid
    if factor > 1:  # a coarser grid (grid.py): the volumes, labels and unlabelled volumes averaged down
        images, labels, unlabelled = (
            [downsample_volume(np.asarray(a), factor, labels=k == 1, channels_last=np.ndim(a) == 4) for a in arrays]
            for k, arrays in enumerate((images, labels, unlabelled or []))
        )
    card.downsample = 1  # training and validation see the coarse grid as it is; the card says so at the end
    samples = prepare_samples(model, images, labels, names, rgb, instances)
    if not card.parent:  # a fine-tuning round may bring one-class corrections
        check_learnable(samples)
    train_s, val_s, val_note = split_samples(samples, cfg.val_fraction, rng)
    held_out = not val_note.startswith("none held out")
    # a validation part that lacks classes of the training part cannot judge the model on them (a slab at
    # one end of a brain holds some of its regions): the latest model is kept, as with nothing held out
    judged = held_out and _classes(val_s) >= _classes(train_s)
    if held_out and not judged:
        val_note += "; it lacks classes the training part has, so the latest model is kept"
    tp = plan(model, train_s, cfg, device.type)
    patch, batch_size, spe, peak_lr, val_tile = tp.patch, tp.batch_size, tp.steps_per_epoch, tp.lr, tp.val_tile
    helpers, train_s = calibration_helpers(val_s, train_s, len(samples)), [pad_to(s, patch) for s in train_s]
    sync, rng = Sync.begin(cfg.seed, rng)  # several processes (torchrun): the same split, crops of their own
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
    amp_dtype = autocast_dtype(device, cfg.amp)  # bfloat16 on CUDA and on CPUs with AMX (layout.py)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)
    autocast = partial(torch.autocast, device.type, dtype=amp_dtype, enabled=use_amp)

    t0 = t_start = time.monotonic()
    budget = cfg.time_budget
    patience = cfg.patience if cfg.patience is not None else (0 if budget else DEFAULT_PATIENCE)
    places = input_channels(card) - card.in_channels  # position channels: not augmented, not damaged
    if cfg.pretrain > 0 and not card.parent:
        pool = [s.x for s in train_s] + unlabelled_inputs(model, unlabelled or [], rgb)
        budget = yield from pretrain_share(module, pool, patch, batch_size, peak_lr, device, cfg, total, cancel, places)
        t0 = time.monotonic()
    best_iou, best_state, best_metrics, best_epoch, kept_epoch = -1.0, None, None, 0, 0
    history: list[dict[str, float]] = []
    stopped, step, epoch = "epochs", 0, 0
    running: list[float] = []
    parent_val = None
    if setup := describe_geometry(card, factor):  # what the data chose (geometry.py), said once
        yield Progress(0, total, setup, {"setup": 1.0})
    if card.parent:  # fine-tuning: score the starting model on the same validation images first
        parent_val = evaluate_samples(model, val_s, device, use_amp, val_tile)
        yield Progress(
            0,
            total,
            f"starting model: {score_name} {parent_val['score']:.3f} on the validation images",
            {"parent_score": parent_val["score"]},
        )

    def expected_total() -> int:
        """The steps training will make: the epoch limit's, or fewer where the time budget binds first."""
        if not budget or step == 0:
            return total
        rate = step / max(time.monotonic() - t0, 1e-6)
        return max(step, min(total, round(rate * budget)))

    def frac() -> float:
        f = step / total
        if budget:
            f = max(f, (time.monotonic() - t0) / budget)
        return min(f, 1.0)

    average = WeightAverage(module) if cfg.average else None
    scored = model if average is None else SegModel(average.module, card)  # what validation scores and keeps
    noise = torch.Generator().manual_seed(sync.seed)
    net = sync.wrap(module, lambda m, x, y: task.loss(m, x, y, card), train_s, patch, device)  # DDP
    index = ClassIndex.of(train_s, np.random.default_rng(cfg.seed + 1))
    # one crop thread on the CPU, more beside a GPU: each with random generators of its own
    gens = [(rng, noise)] + [
        (np.random.default_rng([sync.seed, k]), torch.Generator().manual_seed(sync.seed * 1000 + k))
        for k in range(1, batch_threads(device.type))
    ]
    mirror = card.mirror_axes  # a model fine-tuned keeps its orientation's
    makers = [
        partial(crop_batch, train_s, patch, batch_size, r, cfg.augment, g, index, mirror_axes=mirror, places=places)
        for r, g in gens
    ]
    batches = Batches(makers, enabled=cfg.prefetch and background_batches(device.type))
    last_val_end, last_val_seconds, validated_step = t0, 0.0, -1
    try:
        while epoch < cfg.epochs and (stopped := sync.settle(stopped)) == "epochs":
            epoch += 1
            for _ in range(spe):
                halt = "cancelled" if cancel is not None and cancel() else ""
                halt = halt or ("time budget" if budget and time.monotonic() - t0 > budget else "")
                # warm-up: at least 10 steps, at most 3 % of the steps or 5 % of the time budget
                warm = min(1.0, (step + 1) / 10, max((step + 1) / max(1, total * 0.03), frac() / 0.05))
                lr = peak_lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac())))
                stopped, lr = sync.step(halt, lr, stopped)  # several processes: rank 0's, all stop at one step
                if stopped != "epochs":
                    break
                for g in opt.param_groups:
                    g["lr"] = lr
                x, y = batches.next()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast():
                    loss = task.loss(net, x, y, card)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                if average is not None:
                    average.update(step, expected_total())
                running.append(sync.mean(float(loss.detach())))  # the global batch's
                yield Progress(
                    step,
                    expected_total(),
                    f"epoch {epoch}/{cfg.epochs} · loss {running[-1]:.3f}",
                    {"loss": running[-1], "lr": lr},
                )
            if not running or (step == validated_step and best_state is not None):
                break  # no step since the last validation: it still holds
            if not sync.main or (  # rank 0 alone validates; settle() brings its decision to the others
                stopped == "epochs"
                and epoch < cfg.epochs
                and budget
                and time.monotonic() - last_val_end < last_val_seconds * (1 - VAL_SHARE) / VAL_SHARE
            ):
                continue  # under a time budget validation takes at most VAL_SHARE of the time
            val_start = time.monotonic()
            if average is not None and not isinstance(module, ObjectModel):  # the average's own statistics
                refresh_norm_stats(average.module, lambda: batches.next()[0].to(device), autocast=autocast)
            val = evaluate_samples(scored, val_s, device, use_amp, val_tile)
            validated_step = step
            last_val_end = time.monotonic()
            last_val_seconds = last_val_end - val_start
            row = {
                "epoch": epoch,
                "step": step,
                "time": time.monotonic() - t0,
                "train_loss": float(np.mean(running[-spe:])),
                "val_loss": val["loss"],
                "val_score": val["score"],
            }
            for key in ("mean_iou", "dice", "ap50", "ap50_95", "pq", "sq", "rq"):
                if key in val:
                    row[f"val_{key}"] = val[key] or 0.0
            history.append(row)
            # a tie keeps the later model (it has trained longer, at a lower learning rate, and a small
            # validation set scores many steps alike) but is no improvement: patience runs on. Scored
            # on the training image itself (nothing held out), the latest model is kept: a choice by
            # the score on what it learns from favours the states that fit it best
            improved = val["score"] > best_iou
            if improved or val["score"] == best_iou or not judged:
                best_iou, best_epoch = max(best_iou, val["score"]), epoch if improved else best_epoch
                kept_epoch = epoch
                best_state = copy.deepcopy({n: t.detach().cpu() for n, t in scored.module.state_dict().items()})
                best_metrics = val
                if checkpoint is not None:
                    _annotate(
                        model,
                        cfg,
                        tp,
                        samples,
                        train_s,
                        val_note,
                        history,
                        kept_epoch,
                        best_metrics,
                        "running",
                        step,
                        t_start,
                    )
                    snapshot = SegModel(copy.deepcopy(module).cpu(), card.model_copy(update={"downsample": factor}))
                    snapshot.module.load_state_dict(best_state)
                    save_model(snapshot, checkpoint)
            yield Progress(
                step,
                expected_total(),
                f"epoch {epoch}: val loss {val['loss']:.3f} · {score_name} {val['score']:.3f}"
                + (" (best)" if improved else ""),
                {k2: v for k2, v in row.items() if isinstance(v, float)},
            )
            # no early stop while nothing was learnt yet (a score of 0: e.g. no object found so far), nor
            # in the first half of a time budget: a model that finds only the background can hold the best
            # score for many epochs before it learns rare classes, and the user has given the time
            early_ok = best_iou > 0 and (not budget or time.monotonic() - t0 >= EARLY_STOP_AFTER * budget)
            if patience and early_ok and epoch - best_epoch >= patience and stopped == "epochs":
                stopped = "early stopping"
    finally:
        batches.close()

    weights: dict[str, Any] = {"kept": "average" if average is not None else "latest"}
    if average is not None and held_out and best_metrics is not None and stopped != "cancelled" and sync.main:
        # the average against the latest weights, once: a run that ends while it still learns fast
        # (a 3D atlas whose regions come late) does better with its latest weights than with a mean
        # over the second half of the run, a run that has settled better with the mean
        latest = evaluate_samples(model, val_s, device, use_amp, val_tile)
        weights.update(average=best_metrics["score"], latest=latest["score"])
        if latest["score"] > best_metrics["score"]:
            best_state, best_metrics, kept_epoch, weights["kept"] = None, latest, epoch, "latest"
    if best_state is not None:
        module.load_state_dict(best_state)
    for p_ in module.parameters():  # a frozen encoder is frozen for this training only
        p_.requires_grad_(True)
    module.eval()
    if cfg.calibrate and stopped != "cancelled":
        if held_out and best_metrics is not None:  # post-processing and test-time augmentation chosen on them
            best_metrics = calibrate_inference(model, val_s, device, use_amp, val_tile, helpers) or best_metrics
        elif not held_out and not isinstance(module, ObjectModel):
            model.card.tta = True  # nothing to choose on: TTA's prior (it is kept unless it loses, TTA_MAX_LOSS)
    card.downsample = factor
    _annotate(model, cfg, tp, samples, train_s, val_note, history, kept_epoch, best_metrics, stopped, step, t_start)
    model.card.training = {**(model.card.training or {}), "weights": weights}  # which were kept, and why
    if parent_val is not None and best_metrics is not None:
        model.card.comparison = {
            "metric": score_name,
            "parent": parent_val["score"],
            "new": best_metrics["score"],
            "better": bool(best_metrics["score"] >= parent_val["score"]),
            "validation": val_note,
            "parent_name": (card.parent or {}).get("name"),
            "parent_path": (card.parent or {}).get("path"),
        }
    if checkpoint is not None and sync.main:  # the model as returned: final card (calibration, summary)
        save_model(SegModel(copy.deepcopy(module).cpu(), model.card), checkpoint)
    trim_heap()  # the pages kept for the steps' arrays (heap.py) go back once the run is over
    return TrainResult(model, history, stopped)


def _annotate(
    model: SegModel,
    cfg: TrainConfig,
    tp: TrainPlan,
    samples: list[Sample],
    train_s: list[Sample],
    val_note: str,
    history: list[dict[str, float]],
    best_epoch: int,
    metrics: dict[str, Any] | None,
    stopped: str,
    step: int,
    t0: float,
) -> None:
    """Write the training summary and validation metrics into the model's card."""
    prev = model.card.training
    model.card.training = {
        "samples": len(samples),
        "train_samples": len(train_s),
        "validation": val_note,
        "pixels": int(sum(s.x[0].size for s in samples)),
        "labelled_pixels": int(sum(_labelled(s) for s in samples)),
        "epochs": len(history),
        "best_epoch": best_epoch,
        "steps": step,
        "seconds": round(time.monotonic() - t0, 1),
        "stopped": stopped,
        "config": asdict(cfg),
        "batch_size": tp.batch_size,
        "processes": world_size(),  # the global batch: batch_size x processes
        "patch": list(tp.patch),
        "plan": asdict(tp),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "history": history,
        "previous": {k: v for k, v in prev.items() if k != "history"} if prev else None,
    }
    model.card.metrics = metrics


def _classes(samples: list[Sample]) -> set[int]:
    """The class indices present (labelled) in ``samples``."""
    return {int(c) for s in samples for c in np.unique(s.class_map) if c >= 0}


def _labelled(s: Sample) -> int:
    """Pixels of a sample whose target is known."""
    known = s.truth.classes if s.truth.classes is not None else s.truth.y
    return int((known != IGNORE).sum())


__all__ = ["TrainConfig", "TrainPlan", "TrainResult", "plan", "score_of", "train"]
