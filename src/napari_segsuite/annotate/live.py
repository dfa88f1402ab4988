"""Scribbles with live training, Qt-free: a small UNet learns from sparse strokes on one image (2D, or
a volume slice by slice) while the user paints, and shows what it has learnt over the visible region
every few seconds.

Strokes are a label array of the image's spatial shape: 0 = not annotated (ignored by the loss), 1..K
the classes (K from the strokes; a new class grows the network's output layer, nothing restarts). The
network is :func:`~..model_files.new_model`'s ``unet``; crops and augmentation are :mod:`..augment`'s,
the loss and the maps the semantic task's. The front end calls :meth:`LiveTrainer.update_labels` after
each stroke and :meth:`LiveTrainer.set_view` when the camera moves (both cheap, from any thread), runs
:meth:`LiveTrainer.run` in a worker thread and shows each :class:`LivePrediction` it yields.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..augment import ClassIndex, crop_batch
from ..averaging import WeightAverage
from ..inference import pick_device, predict_maps
from ..layout import autocast_dtype
from ..model_files import SegModel, new_model
from ..preprocess import DEFAULT_NORMALIZATION, infer_axes, normalize, to_slices
from ..progress import drive
from ..samples import Sample, pad_to
from ..tasks import IGNORE, Targets, get_task

Region = tuple[slice, ...]

#: The prediction is made with an average of the weights over about this many latest steps.
AVERAGE_STEPS = 10


@dataclass
class LiveConfig:
    """Settings of live training; the defaults refresh within about 3 s of a stroke on a 2-core CPU.

    Attributes:
        refresh: Seconds of training between two predictions.
        after_stroke: After new strokes, seconds of training before the next prediction (so a stroke
            shows sooner than a full ``refresh``).
        patch: Crop edge in pixels; each crop holds a stroke.
        batch_size: Crops per optimiser step.
        lr: AdamW learning rate (constant after a 10-step warm-up).
        base_filters, depth: The UNet's size (small: about 0.1 s a step on one CPU core).
        augment: Flips, rotations, scaling, elastic deformation, gamma, gain and noise (:func:`~..augment.crop_batch`).
        focus_steps: After new strokes, half of each batch is centred on them for this many steps.
        margin: Context in pixels predicted around the requested region (and dropped).
        device: ``"cpu"``, ``"auto"`` or a torch device string.
        seed: Seed of crops and weights.
    """

    refresh: float = 2.0
    after_stroke: float = 1.0
    patch: int = 128
    batch_size: int = 4
    lr: float = 2e-3
    base_filters: int = 8
    depth: int = 4
    augment: bool = True
    focus_steps: int = 20
    margin: int = 16
    device: str = "cpu"
    seed: int = 0


@dataclass
class LivePrediction:
    """What the model says over one region, as :meth:`LiveTrainer.run` yields it.

    Attributes:
        region: Slices of the image's spatial axes (``(z, y, x)`` for a volume, ``z`` one slice wide).
        classes: Label values (1..K) over the region, uint8 (uint16 beyond 255 classes).
        probs: ``(K, *region shape)`` float32 softmax maps.
        step: Optimiser steps made so far.
        version: The stroke version (:attr:`LiveTrainer.version`) the model had trained on.
        loss: Mean loss of the steps since the last prediction (``nan`` when none).
        seconds: Since training started.
    """

    region: Region
    classes: np.ndarray
    probs: np.ndarray
    step: int
    version: int
    loss: float
    seconds: float


class LiveTrainer:
    """Trains a small UNet on the strokes of one image while they change; see the module's docstring.

    Args:
        image: ``(Y, X)``, ``(Y, X, 3)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3)``.
        labels: The strokes so far (``None``: none yet); copied.
        rgb: Whether the last axis is colour (``None``: guessed from the shape).
        config: :class:`LiveConfig`.
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        rgb: bool | None = None,
        config: LiveConfig | None = None,
    ) -> None:
        self.config = cfg = config or LiveConfig()
        axes = infer_axes(np.shape(image), rgb)
        channels = 3 if axes.rgb else 1
        self._x = normalize(to_slices(np.asarray(image), axes, channels), DEFAULT_NORMALIZATION)  # (S, C, H, W)
        self.shape: tuple[int, ...] = axes.spatial_shape(tuple(np.shape(image)))
        self.volume = len(self.shape) == 3
        self.device = pick_device(cfg.device)
        self._rng = np.random.default_rng(cfg.seed)
        self._noise = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model: SegModel = new_model(
            "unet",
            label_values=[1, 2],
            in_channels=channels,
            unannotated_value=0,
            base_filters=cfg.base_filters,
            depth=cfg.depth,
        )
        self.model.module.to(self.device).train()
        self._opt = self._optimiser()
        self._average = WeightAverage(self.model.module)  # what is shown: steadier than the latest step
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: np.ndarray | None = None
        self._view: Region | None = None
        self._paused = self._stopped = False
        self._strokes = np.zeros((self._x.shape[0], *self._x.shape[2:]), np.int32)  # (S, H, W)
        self._samples: list[Sample] = []
        self._index: ClassIndex | None = None
        self._recent: list[tuple[int, np.ndarray]] = []  # (sample, (k, 2) points) of the latest strokes
        self._focus = 0
        self.version = 0  #: Strokes picked up so far (one per :meth:`update_labels` that changed them).
        self.trained_version = -1  #: The stroke version the last optimiser step saw.
        self.step = 0
        self.latest: LivePrediction | None = None
        #: Label values of every region predicted so far (0 where none was), of the image's spatial shape.
        self.prediction = np.zeros(self.shape, np.uint8)
        if labels is not None:
            self.update_labels(labels)
            self._take_labels()

    # --- from the front end (any thread) ---------------------------------------------------------
    def update_labels(self, labels: np.ndarray) -> None:
        """New strokes: picked up before the next optimiser step (the array is read there, not here)."""
        if tuple(np.shape(labels)) != self.shape:
            raise ValueError(
                f"Strokes are {np.shape(labels)} but the image is {self.shape}; paint on a layer of its size."
            )
        with self._lock:
            self._pending = labels
        self._wake.set()

    def set_view(self, region: Region | None) -> None:
        """The region to predict over (the visible field of view; ``None``: the whole image or the first slice)."""
        with self._lock:
            self._view = self._clip(region)
        self._wake.set()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def stop(self) -> None:
        """End :meth:`run` after the current step."""
        self._stopped = True
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def classes(self) -> int:
        """K: the number of classes the model has."""
        return self.model.card.num_classes

    def snapshot(self) -> SegModel:
        """A copy of the model as its predictions show it (the averaged weights), to use beside the loop."""
        return SegModel(copy.deepcopy(self._average.module).eval(), self.model.card.model_copy(deep=True))

    # --- the loop (one worker thread) --------------------------------------------------------------
    def run(self) -> Iterator[LivePrediction]:
        """Train while there are strokes of two classes, yielding a prediction over the view every
        ``refresh`` seconds (``after_stroke`` after new strokes); while paused, only when the view
        moves. Returns (``StopIteration``) after :meth:`stop`."""
        cfg = self.config
        t0 = last = time.monotonic()
        losses: list[float] = []
        shown: tuple[Region | None, int] | None = None
        while not self._stopped:
            changed = self._take_labels()
            if changed:
                last = min(last, time.monotonic() - cfg.refresh + cfg.after_stroke)
            ready = self._index is not None and len(self._index.classes) >= 2
            if self._paused or not ready:
                if shown != (self._view, self.step) and self.step > 0:
                    shown = (self._view, self.step)
                    yield self.predict(losses, t0)
                    losses = []
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            losses.append(self._train_step())
            if time.monotonic() - last >= cfg.refresh:
                shown = (self._view, self.step)
                yield self.predict(losses, t0)
                losses, last = [], time.monotonic()

    def predict(
        self, losses: list[float] | None = None, t0: float | None = None, region: Region | None = None
    ) -> LivePrediction:
        """The model's classes and maps over ``region`` (default: the view), kept in :attr:`prediction`."""
        with self._lock:
            region = self._clip(region) if region is not None else self._view or self._clip(None)
        cfg = self.config
        z, yx = (region[0].start, region[1:]) if self.volume else (0, region)
        lo = [max(0, s.start - cfg.margin) for s in yx]
        hi = [min(n, s.stop + cfg.margin) for s, n in zip(yx, self._x.shape[2:])]
        x = self._x[z, :, lo[0] : hi[0], lo[1] : hi[1]]
        shown = SegModel(self._average.module.eval(), self.model.card)
        tile = int(min(1024, -(-max(x.shape[1:]) // 16) * 16))
        maps = drive(predict_maps(shown, x, tile=tile, overlap=0.1, device=self.device, amp=False))
        inner = (slice(None),) + tuple(slice(s.start - a, s.stop - a) for s, a in zip(yx, lo))
        probs = np.ascontiguousarray(maps[inner], np.float32)
        classes = (probs.argmax(0) + 1).astype(np.uint8 if self.classes < 256 else np.uint16)
        if classes.dtype != self.prediction.dtype:
            self.prediction = self.prediction.astype(classes.dtype)
        self.prediction[region] = classes[None] if self.volume else classes
        if self.volume:
            probs, classes = probs[:, None], classes[None]
        mean = float(np.mean(losses)) if losses else float("nan")
        self.latest = LivePrediction(
            region, classes, probs, self.step, self.trained_version, mean, time.monotonic() - (t0 or time.monotonic())
        )
        return self.latest

    def accept(
        self, user_labels: np.ndarray, classes: list[int] | None = None
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Where and what to write into the user's labels: the predicted values (of ``classes`` only,
        default all) on pixels that were predicted and that the user has not labelled (value 0).

        Returns:
            ``(indices, values)`` for ``Labels.data_setitem`` (so napari's undo takes it back).
        """
        if tuple(np.shape(user_labels)) != self.shape:
            raise ValueError(f"Labels are {np.shape(user_labels)} but the image is {self.shape}.")
        pred = self.prediction
        take = (pred > 0) & (np.asarray(user_labels) == 0)
        if classes is not None:
            take &= np.isin(pred, np.asarray(classes, pred.dtype))
        where = np.nonzero(take)
        return where, pred[where].astype(np.asarray(user_labels).dtype)

    # --- inside ---------------------------------------------------------------------------------------
    def _clip(self, region: Region | None) -> Region:
        """``region`` within the image, ``z`` one slice wide; ``None``: all of it (the first slice)."""
        full = tuple(slice(0, n) for n in self.shape)
        if region is None:
            return (slice(0, 1), *full[1:]) if self.volume else full
        out = []
        for s, n in zip(region[-len(self.shape) :], self.shape):
            a = int(np.clip(s.start or 0, 0, n - 1))
            out.append(slice(a, int(np.clip(n if s.stop is None else s.stop, a + 1, n))))
        if self.volume:
            out[0] = slice(out[0].start, out[0].start + 1)
        return tuple(out)

    def _optimiser(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.module.parameters(), lr=self.config.lr, weight_decay=1e-4)

    def _take_labels(self) -> bool:
        """Pick up strokes handed over by :meth:`update_labels`; whether they changed."""
        with self._lock:
            new, self._pending = self._pending, None
        if new is None:
            return False
        new = np.array(new, np.int32).reshape(self._strokes.shape)  # a copy: the user paints on
        diff = new != self._strokes
        if not diff.any() and self._samples:
            return False
        k = int(new.max(initial=0))
        if k > self.classes:
            self._grow(k)
        self._strokes = new
        y = np.where(new > 0, new - 1, IGNORE).astype(np.int64)
        patch = (self.config.patch, self.config.patch)
        self._samples = [pad_to(Sample(self._x[s], Targets(y[s], y[s])), patch) for s in range(len(new))]
        self._index = ClassIndex.of(self._samples, self._rng) if (new > 0).any() else None
        fresh = diff & (new > 0)
        self._recent = []
        for s in np.flatnonzero(fresh.reshape(len(new), -1).any(1)):
            pts = np.argwhere(fresh[s])
            self._recent.append((int(s), pts[self._rng.integers(0, len(pts), min(len(pts), 2048))]))
        self._focus = self.config.focus_steps if self._recent else 0
        self.version += 1
        return True

    def _grow(self, k: int) -> None:
        """More classes painted: widen the output layer, keeping what the others learnt."""
        module, old = self.model.module, self.classes
        name, head = _output_conv(module, old)
        size = (int(head.kernel_size[0]), int(head.kernel_size[-1]))
        pad = head.padding if isinstance(head.padding, str) else (int(head.padding[0]), int(head.padding[-1]))
        new = nn.Conv2d(head.in_channels, k, size, padding=pad, bias=head.bias is not None).to(self.device)
        with torch.no_grad():
            new.weight[:old] = head.weight
            if new.bias is not None and head.bias is not None:
                new.bias[old:] = head.bias.min() - 2.0  # a new class starts unlikely
                new.bias[:old] = head.bias
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        setattr(parent, name.rpartition(".")[2], new)
        card = self.model.card
        card.num_classes, card.label_values = k, list(range(1, k + 1))
        card.class_names = [f"class {v}" for v in card.label_values]
        self._opt = self._optimiser()
        self._average = WeightAverage(module)

    def _train_step(self) -> float:
        cfg = self.config
        assert self._index is not None
        windows = [self._window(*self._centre()) for _ in range(cfg.batch_size)]
        p = cfg.patch
        x, y = crop_batch(windows, (p, p), cfg.batch_size, self._rng, cfg.augment, self._noise)
        warm = min(1.0, (self.step + 1) / 10)
        for g in self._opt.param_groups:
            g["lr"] = cfg.lr * warm
        low = autocast_dtype(self.device)  # bfloat16 where the hardware has it (no loss scaling here for float16)
        with torch.autocast(self.device.type, dtype=low, enabled=low == torch.bfloat16):
            loss = get_task(self.model.card.kind).loss(
                self.model.module, x.to(self.device), y.to(self.device), self.model.card
            )
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        self.step += 1
        self._average.update(self.step, AVERAGE_STEPS * 10)
        self._focus = max(0, self._focus - 1)
        self.trained_version = self.version
        return float(loss.detach())

    def _centre(self) -> tuple[int, np.ndarray]:
        """A sample and a stroke pixel in it: half on the latest strokes while they are fresh, else a
        class drawn uniformly from those painted (:meth:`~..augment.ClassIndex.draw`)."""
        if self._focus and self._recent and self._rng.random() < 0.5:
            s, pts = self._recent[int(self._rng.integers(len(self._recent)))]
            return s, pts[int(self._rng.integers(len(pts)))]
        assert self._index is not None
        return self._index.draw(self._rng)

    def _window(self, s: int, centre: np.ndarray) -> Sample:
        """The patch-sized part of sample ``s`` that holds ``centre`` anywhere inside it."""
        sample, p = self._samples[s], self.config.patch
        starts = [
            int(np.clip(int(c) - int(self._rng.integers(0, p)), 0, n - p)) for c, n in zip(centre, sample.x.shape[1:])
        ]
        win = tuple(slice(a, a + p) for a in starts)
        return Sample(sample.x[(slice(None), *win)], Targets(sample.y[win], sample.y[win]))


def _output_conv(module: nn.Module, classes: int) -> tuple[str, nn.Conv2d]:
    """The last convolution with ``classes`` outputs: the network's output layer."""
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    if not found:
        raise ValueError("This network has no output convolution to widen for a new class.")
    return found[-1]


__all__ = ["LiveConfig", "LivePrediction", "LiveTrainer"]
