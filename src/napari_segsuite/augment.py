"""Augmentation: random crops with flips, 90-degree rotations, scaling, elastic deformation, gamma,
gain/offset and noise, applied to the image and its targets alike (targets by nearest neighbour)."""

from __future__ import annotations

import contextlib
import math
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .samples import Sample
from .tasks import IGNORE

#: Share of 2D crops deformed elastically (each costs about as much as a tenth of a CPU training step).
ELASTIC_P = 0.3
#: Share of crops centred on a pixel of a class drawn uniformly from the classes present (the rest are
#: placed uniformly): rare classes (a small structure in a large volume, sparse objects) are seen
#: in training as often as common ones, as nnU-Net does with its foreground oversampling.
CLASS_CROP_P = 1 / 3
#: Pixels remembered per class and sample for :class:`ClassIndex` (a random subset beyond this).
CLASS_POINTS = 4096


@dataclass
class ClassIndex:
    """Where each class lies in each training sample (a random subset of its pixels), for crops
    centred on a class (:data:`CLASS_CROP_P`).

    Attributes:
        points: Per sample, class index -> ``(k, ndim)`` pixel coordinates.
        classes: The classes present in any sample.
    """

    points: list[dict[int, np.ndarray]]
    classes: list[int]

    @classmethod
    def of(cls, train: list[Sample], rng: np.random.Generator, most: int = CLASS_POINTS) -> ClassIndex:
        points: list[dict[int, np.ndarray]] = []
        for s in train:
            m = s.class_map
            flat = m.ravel()
            found: dict[int, np.ndarray] = {}
            for c in np.unique(flat):
                if c < 0:  # unlabelled
                    continue
                where = np.flatnonzero(flat == c)
                if len(where) > most:
                    where = where[rng.integers(0, len(where), most)]
                found[int(c)] = np.stack(np.unravel_index(where, m.shape), 1)
            points.append(found)
        return cls(points, sorted(set().union(*points)))

    def draw(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """A sample and a pixel in it of a class drawn uniformly from :attr:`classes`."""
        c = self.classes[int(rng.integers(len(self.classes)))]
        having = [i for i, p in enumerate(self.points) if c in p]
        sizes = np.array([len(self.points[i][c]) for i in having], np.float64)
        i = having[int(rng.choice(len(having), p=sizes / sizes.sum()))]
        pts = self.points[i][c]
        return i, pts[int(rng.integers(len(pts)))]


def elastic(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, grid: int = 3, std_px: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
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
    yo = TF.elastic(tv_tensors.Mask(y if y.ndim == 3 else y[None]), disp, fill=IGNORE)
    return xo.as_subclass(torch.Tensor), (yo if y.ndim == 3 else yo[0]).as_subclass(torch.Tensor)


def crop_batch(
    train: list[Sample],
    patch: tuple[int, ...],
    n: int,
    rng: np.random.Generator,
    augment: bool,
    noise: torch.Generator | None = None,
    index: ClassIndex | None = None,
    mirror_axes: Sequence[int] | None = None,
    places: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random crops of size ``patch`` (2D ``(p, p)`` or 3D ``(pz, p, p)``), augmented; pixel
    noise is drawn from ``noise`` (default: torch's global generator). With ``index``, a share
    :data:`CLASS_CROP_P` of the crops hold a pixel of a class drawn uniformly from those present.

    ``mirror_axes``: the spatial axes (0 = the first of ``patch``) along which crops are mirrored;
    ``None``: all of them, and square crops are also rotated by multiples of 90 degrees in Y/X
    (microscopy has no up or down). Given, crops are mirrored along those axes only and never
    rotated: images of a fixed orientation, such as a brain MRI whose anatomy survives a left-right
    mirroring but not an upside-down one (:attr:`~.train_config.TrainConfig.mirror_axes`).

    ``places``: the samples' last channels that are position channels (:mod:`.position`): cropped,
    scaled, deformed and mirrored with the image, never changed in intensity."""
    weights = np.array([s.x[0].size for s in train], dtype=np.float64)
    nd = len(patch)
    xs, ys = [], []
    for i in rng.choice(len(train), size=n, p=weights / weights.sum()):
        centre = None
        if index is not None and len(index.classes) > 1 and rng.random() < CLASS_CROP_P:
            i, centre = index.draw(rng)
        s = train[i]
        spatial = s.x.shape[1:]
        size = list(patch)
        if augment and nd == 2:  # scale augmentation: crop a larger or smaller window, resize to the patch
            c = int(np.clip(round(patch[0] * math.exp(rng.uniform(-0.25, 0.25))), 16, min(spatial)))
            size = [c, c]
        if centre is None:
            starts = [int(rng.integers(0, dim - c + 1)) for dim, c in zip(spatial, size)]
        else:  # the pixel anywhere in the crop
            starts = [
                int(np.clip(int(p) - int(rng.integers(0, c)), 0, dim - c)) for p, dim, c in zip(centre, spatial, size)
            ]
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
                if (mirror_axes is None or axis + nd in mirror_axes) and rng.random() < 0.5:
                    x, y = x.flip(axis), y.flip(axis)
            if mirror_axes is None and patch[-1] == patch[-2]:
                k = int(rng.integers(4))
                x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
            if nd == 2 and rng.random() < ELASTIC_P:
                x, y = elastic(x, y, rng)
            x, where = (x[: x.shape[0] - places], x[x.shape[0] - places :]) if places else (x, None)
            if rng.random() < 0.5:  # gamma, within each channel's own range
                lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
                hi = x.amax(dim=tuple(range(1, x.ndim)), keepdim=True)
                g = float(math.exp(rng.uniform(-0.4, 0.4)))
                x = lo + (hi - lo) * ((x - lo) / (hi - lo + 1e-6)).clamp(0, 1) ** g
            shape = (x.shape[0],) + (1,) * nd
            gain = torch.from_numpy(rng.uniform(0.75, 1.33, shape).astype(np.float32))
            shift = torch.from_numpy(rng.uniform(-0.15, 0.15, shape).astype(np.float32))
            x = x * gain + shift
            if rng.random() < 0.5:  # ``noise``: a generator of its own, so no other thread's torch calls disturb it
                x = x + float(rng.uniform(0, 0.08)) * torch.randn(x.shape, generator=noise)
            x = x if where is None else torch.cat([x, where])
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


Batch = tuple[torch.Tensor, torch.Tensor]


#: Seconds a prefetch thread waits with its batch ready and nobody taking it before it ends (a
#: training generator left unfinished would otherwise keep it forever); a later batch restarts it.
IDLE_SECONDS = 300.0


def _make_batches(
    make: Callable[[], Batch],
    out: queue.Queue[Batch | BaseException],
    stop: threading.Event,
    pending: list[Batch | BaseException],
    idle: float,
) -> None:
    """The prefetch thread's loop. It holds no reference to its :class:`Prefetch`, so dropping that
    object (its finaliser sets ``stop``) ends the thread."""
    while not stop.is_set():
        if pending:
            item = pending.pop()
        else:
            try:
                item = make()
            except BaseException as err:  # handed to the training thread, which raises it
                item = err
        give_up = time.monotonic() + idle
        while True:
            if stop.is_set():
                return
            try:
                out.put(item, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > give_up:
                    pending.append(item)  # the next thread hands it out first: the order stays
                    return
        if isinstance(item, BaseException):
            return


class Prefetch:
    """Batches made by ``make`` in a background thread, ``depth`` ahead of the training step.

    ``make`` is called from one thread only, one batch after another, so a seeded ``make`` gives
    the same batches in the same order as calling it directly. With ``enabled=False`` :meth:`next`
    calls ``make`` itself. An error in ``make`` is raised by :meth:`next`.

    The thread ends on :meth:`close`, when the object is garbage-collected, and when no batch has
    been taken for ``idle`` seconds (default :data:`IDLE_SECONDS`); :meth:`next` starts it again.
    """

    def __init__(
        self, make: Callable[[], Batch], depth: int = 2, *, enabled: bool = True, idle: float | None = None
    ) -> None:
        self._make = make
        self._enabled = enabled
        self._idle = IDLE_SECONDS if idle is None else idle
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pending: list[Batch | BaseException] = []
        self._thread: threading.Thread | None = None
        if enabled:
            self._finalizer = weakref.finalize(self, self._stop.set)  # dropped unclosed: the thread still ends
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=_make_batches,
            args=(self._make, self._queue, self._stop, self._pending, self._idle),
            name="segsuite-batches",
            daemon=True,
        )
        self._thread.start()

    def next(self) -> Batch:
        if not self._enabled:
            return self._make()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError("This batch source was closed.") from None
                if self._thread is None or not self._thread.is_alive():
                    self._start()  # it ended while idle
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is making) and drop what it made."""
        self._stop.set()
        if self._thread is not None and not sys.is_finalizing():
            deadline = time.monotonic() + 30
            while self._thread.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._thread.join(timeout=1)
        self._pending.clear()


class Batches:
    """Batches from several makers, each in a :class:`Prefetch` thread of its own, taken in turn (so
    seeded makers give the same batches in the same order every run). One maker: one thread, as
    :class:`Prefetch`. For GPUs, whose steps outrun one CPU thread's crops and augmentation."""

    def __init__(self, makers: Sequence[Callable[[], Batch]], depth: int = 2, *, enabled: bool = True) -> None:
        self._parts = [Prefetch(m, depth, enabled=enabled) for m in makers]
        self._turn = 0

    def next(self) -> Batch:
        batch = self._parts[self._turn].next()
        self._turn = (self._turn + 1) % len(self._parts)
        return batch

    def close(self) -> None:
        for part in self._parts:
            part.close()


def background_batches(device_type: str) -> bool:
    """Whether batches are made in background threads while the model trains: beside a GPU. On the CPU
    they are made between steps: the cores that would make them are the ones training (a thread beside
    them cost 7 % of the steps on 2 cores, and a batch takes about 1 % of a step there)."""
    return device_type != "cpu"


def batch_threads(device_type: str, cpus: int | None = None) -> int:
    """Threads making batches: one on the CPU (the cores train), up to four beside a GPU."""
    import os

    if device_type == "cpu":
        return 1
    return max(1, min(4, (cpus or os.cpu_count() or 2) // 2))
