"""Tiled sliding-window inference with blended overlaps, 2D models over 3D volumes slice by slice.

No Qt or napari here: :func:`predict` is a generator that yields :class:`~.progress.Progress` once per
batch of tiles (so a front end can cancel between tiles) and returns the label array.
"""

from __future__ import annotations

import logging
import itertools
import math

import numpy as np
import torch

from .io import SegModel
from .preprocess import LabelMap, infer_axes, normalize, to_slices
from .progress import Progress, Work, map_progress
from .tasks import instance, semantic

log = logging.getLogger(__name__)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0..size`` with step <= ``stride``; the last ends at ``size``."""
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / stride) + 1
    return sorted({round(i * (size - tile) / (n - 1)) for i in range(n)})


def blend_window(shape: tuple[int, ...], ramp: int | tuple[int, ...]) -> np.ndarray:
    """Tile weights: 1 in the middle, falling linearly to a small floor over ``ramp`` pixels at each edge."""
    ramps = (ramp,) * len(shape) if isinstance(ramp, int) else ramp
    w = np.ones((), np.float32)
    for n, r in zip(shape, ramps):
        r = max(1, min(r, n // 2))
        i = np.arange(n, dtype=np.float32)
        w = np.multiply.outer(w, np.clip(np.minimum(i + 1, n - i) / (r + 1), 1e-3, 1.0))
    return w.astype(np.float32)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _forward(module: torch.nn.Module, batch: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(batch.device.type, enabled=amp and batch.device.type == "cuda"):
        out = module(batch)
    return out.float().softmax(1)


def predict_probs(
    module: torch.nn.Module,
    image: np.ndarray,
    *,
    num_classes: int,
    tile: int | tuple[int, ...] = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    divisible_by: int = 1,
    device: torch.device | None = None,
    amp: bool = True,
) -> Work[np.ndarray]:
    """Class probabilities of one normalised 2D image or 3D volume, tile by tile.

    Args:
        module: Maps ``(N, C, *tile)`` to ``(N, K, *tile)`` logits; must be in eval mode.
        image: ``(C, H, W)`` or ``(C, D, H, W)`` float32, already normalised.
        tile: Tile edge per spatial axis (an int applies to all), rounded up to ``divisible_by``;
            an image no larger than the tile runs whole.
        overlap: Fraction of the tile shared by neighbours, blended with :func:`blend_window`.

    Yields:
        :class:`Progress` per batch of tiles (``step`` of ``total`` batches).

    Returns:
        ``(K, *spatial)`` float32 probabilities.
    """
    device = device or next(module.parameters()).device
    spatial = image.shape[1:]
    nd = len(spatial)
    tiles = (tile,) * nd if isinstance(tile, int) else tuple(tile)
    m = max(1, divisible_by)
    ts = tuple(_round_up(min(t, n), m) for t, n in zip(tiles, spatial))
    padded = tuple(max(n, t) for n, t in zip(spatial, ts))
    x = torch.from_numpy(np.ascontiguousarray(image))
    if padded != spatial:
        pads: list[int] = []
        for n, p in zip(reversed(spatial), reversed(padded)):
            pads += [0, p - n]
        mode = "reflect" if all(p - n < n for n, p in zip(spatial, padded)) else "replicate"
        x = torch.nn.functional.pad(x[None], pads, mode=mode)[0]
    starts = [tile_starts(p, t, max(1, int(t * (1 - overlap)))) for p, t in zip(padded, ts)]
    coords = list(itertools.product(*starts))
    weight = torch.from_numpy(blend_window(ts, tuple(int(t * overlap) for t in ts)))
    acc = torch.zeros((num_classes, *padded))
    norm = torch.zeros(padded)
    n_batches = math.ceil(len(coords) / batch_size)
    for b in range(n_batches):
        chunk = coords[b * batch_size:(b + 1) * batch_size]
        windows = [tuple(slice(c, c + t) for c, t in zip(corner, ts)) for corner in chunk]
        batch = torch.stack([x[(slice(None), *w)] for w in windows]).to(device)
        probs = _forward(module, batch, amp).cpu()
        for p, w in zip(probs, windows):
            acc[(slice(None), *w)] += p * weight
            norm[w] += weight
        yield Progress(b + 1, n_batches, f"tiles {b + 1}/{n_batches}")
    crop = tuple(slice(0, n) for n in spatial)
    return (acc / norm)[(slice(None), *crop)].numpy()


def predict(
    model: SegModel,
    image: np.ndarray,
    *,
    rgb: bool | None = None,
    tile: int = 512,
    tile_z: int = 32,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    amp: bool = True,
    output: str = "values",
) -> Work[np.ndarray]:
    """Segment a 2D image or a 3D volume (2D models run slice by slice).

    Args:
        model: A loaded :class:`~.io.SegModel`.
        image: ``(Y, X)``, ``(Y, X, 3)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3)``, any numeric dtype.
        rgb: Force the colour reading of a trailing 3/4 axis (``None``: guess as napari does).
        tile, overlap, batch_size: Sliding-window settings (see :func:`predict_probs`).
        tile_z: Tile depth for native 3D models (2D models run slice by slice).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...; on CUDA out-of-memory the tile is halved and retried.
        amp: Mixed precision on CUDA.
        output: ``"values"`` for the user's label values (the card's ``label_values``), ``"classes"``
            for class indices 0..K-1.

    Yields:
        :class:`Progress` once per batch of tiles.

    Returns:
        Labels of the image's spatial shape: ``(Y, X)`` or ``(Z, Y, X)``. Semantic models give class
        values; instance models give int32 object ids 1..N (0 background), unique in the whole image
        or volume (tiles are blended before objects are formed, so none is cut at a tile border).
    """
    card = model.card
    axes = infer_axes(np.shape(image), rgb)
    dev = pick_device(device)
    module = model.module.to(dev).eval()
    slices = normalize(to_slices(image, axes, card["in_channels"]), card.get("normalization"))
    if card.get("spatial_dims", 2) == 3:  # native 3D: the whole (C, Z, Y, X) volume in 3D tiles
        volume = np.moveaxis(slices, 0, 1)
        probs = yield from map_progress(
            predict_probs(module, volume, num_classes=card["num_classes"], tile=(tile_z, tile, tile),
                          overlap=overlap, batch_size=max(1, batch_size // 2), device=dev, amp=amp),
            lambda p: Progress(p.step, p.total, f"3D {p.note}"),
        )
        labels3 = semantic.postprocess(probs)
        labels3 = labels3 if axes.volume else labels3[0]
        return labels3 if output == "classes" else LabelMap(card["label_values"]).to_values(labels3)
    n_slices = slices.shape[0]
    is_instance = card.get("kind") == "instance"
    out = np.zeros((n_slices, *slices.shape[2:]), dtype=np.int64)
    step = 0
    for s in range(n_slices):
        while True:
            try:
                totals: list[int] = []

                def rebase(p: Progress, s: int = s) -> Progress:
                    totals[:] = [p.total]
                    note = f"slice {s + 1}/{n_slices}, {p.note}" if n_slices > 1 else p.note
                    return Progress(step + p.step, p.total * n_slices, note)

                probs = yield from map_progress(predict_probs(
                    module, slices[s], num_classes=card["num_classes"], tile=tile, overlap=overlap,
                    batch_size=batch_size, divisible_by=card.get("divisible_by", 1), device=dev, amp=amp,
                ), rebase)
                out[s] = instance.postprocess(probs) if is_instance else semantic.postprocess(probs)
                step += totals[0]
                break
            except torch.cuda.OutOfMemoryError:
                if tile <= 128:
                    raise RuntimeError(
                        "The GPU ran out of memory even with 128-pixel tiles; run on the CPU (device='cpu')."
                    ) from None
                torch.cuda.empty_cache()
                tile //= 2
                log.warning("GPU out of memory; retrying with %d-pixel tiles", tile)
    if is_instance:  # object ids, linked across slices into 3D objects for volumes
        return instance.link_slices(out) if axes.volume else instance.relabel(out[0])
    labels = out if axes.volume else out[0]
    if output == "classes":
        return labels
    return LabelMap(card["label_values"]).to_values(labels)
