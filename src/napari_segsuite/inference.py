"""Tiled sliding-window inference with blended overlaps, 2D models over 3D volumes slice by slice.

No Qt or napari here: :func:`predict` is a generator that yields :class:`~.progress.Progress` once per
batch of tiles (so a front end can cancel between tiles) and returns the label array.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from .io import SegModel
from .preprocess import LabelMap, infer_axes, normalize, to_slices
from .progress import Progress, Work
from .tasks import semantic

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


def blend_window(shape: tuple[int, int], ramp: int) -> np.ndarray:
    """Tile weights: 1 in the middle, falling linearly to a small floor over ``ramp`` pixels at each edge."""
    axes = []
    for n in shape:
        r = max(1, min(ramp, n // 2))
        i = np.arange(n, dtype=np.float32)
        axes.append(np.clip(np.minimum(i + 1, n - i) / (r + 1), 1e-3, 1.0))
    return axes[0][:, None] * axes[1][None, :]


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
    tile: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    divisible_by: int = 1,
    device: torch.device | None = None,
    amp: bool = True,
) -> Iterator[tuple[int, int] | np.ndarray]:
    """Class probabilities of one normalised 2D image, tile by tile.

    Args:
        module: Maps ``(N, C, h, w)`` to ``(N, K, h, w)`` logits; must be in eval mode.
        image: ``(C, H, W)`` float32, already normalised.
        tile: Tile edge in pixels (rounded up to ``divisible_by``); images no larger run whole.
        overlap: Fraction of the tile shared by neighbours, blended with :func:`blend_window`.

    Yields:
        ``(done, total)`` tile-batch counts, then finally the ``(K, H, W)`` float32 probabilities.
    """
    device = device or next(module.parameters()).device
    _, h, w = image.shape
    m = max(1, divisible_by)
    th, tw = _round_up(min(tile, h), m), _round_up(min(tile, w), m)
    ph, pw = max(h, th), max(w, tw)
    x = torch.from_numpy(np.ascontiguousarray(image))
    if (ph, pw) != (h, w):
        mode = "reflect" if ph - h < h and pw - w < w else "replicate"
        x = torch.nn.functional.pad(x[None], (0, pw - w, 0, ph - h), mode=mode)[0]
    ys = tile_starts(ph, th, max(1, int(th * (1 - overlap))))
    xs = tile_starts(pw, tw, max(1, int(tw * (1 - overlap))))
    coords = [(y, x0) for y in ys for x0 in xs]
    weight = torch.from_numpy(blend_window((th, tw), int(min(th, tw) * overlap)))
    acc = torch.zeros((num_classes, ph, pw))
    norm = torch.zeros((ph, pw))
    n_batches = math.ceil(len(coords) / batch_size)
    for b in range(n_batches):
        chunk = coords[b * batch_size:(b + 1) * batch_size]
        batch = torch.stack([x[:, y:y + th, x0:x0 + tw] for y, x0 in chunk]).to(device)
        probs = _forward(module, batch, amp).cpu()
        for p, (y, x0) in zip(probs, chunk):
            acc[:, y:y + th, x0:x0 + tw] += p * weight
            norm[y:y + th, x0:x0 + tw] += weight
        yield (b + 1, n_batches)
    yield (acc / norm)[:, :h, :w].numpy()


def predict(
    model: SegModel,
    image: np.ndarray,
    *,
    rgb: bool | None = None,
    tile: int = 512,
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
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...; on CUDA out-of-memory the tile is halved and retried.
        amp: Mixed precision on CUDA.
        output: ``"values"`` for the user's label values (the card's ``label_values``), ``"classes"``
            for class indices 0..K-1.

    Yields:
        :class:`Progress` once per batch of tiles.

    Returns:
        Labels of the image's spatial shape: ``(Y, X)`` or ``(Z, Y, X)``.
    """
    card = model.card
    axes = infer_axes(np.shape(image), rgb)
    dev = pick_device(device)
    module = model.module.to(dev).eval()
    slices = normalize(to_slices(image, axes, card["in_channels"]), card.get("normalization"))
    n_slices = slices.shape[0]
    out = np.zeros((n_slices, *slices.shape[2:]), dtype=np.int64)
    step = 0
    for s in range(n_slices):
        while True:
            try:
                gen = predict_probs(
                    module, slices[s], num_classes=card["num_classes"], tile=tile, overlap=overlap,
                    batch_size=batch_size, divisible_by=card.get("divisible_by", 1), device=dev, amp=amp,
                )
                for item in gen:
                    if isinstance(item, tuple):
                        done, total = item
                        yield Progress(
                            step + done, total * n_slices,
                            f"slice {s + 1}/{n_slices}, tiles {done}/{total}" if n_slices > 1 else f"tiles {done}/{total}",
                        )
                    else:
                        out[s] = semantic.postprocess(item)
                step += total
                break
            except torch.cuda.OutOfMemoryError:
                if tile <= 128:
                    raise RuntimeError(
                        "The GPU ran out of memory even with 128-pixel tiles; run on the CPU (device='cpu')."
                    ) from None
                torch.cuda.empty_cache()
                tile //= 2
                log.warning("GPU out of memory; retrying with %d-pixel tiles", tile)
    labels = out if axes.volume else out[0]
    if output == "classes":
        return labels
    return LabelMap(card["label_values"]).to_values(labels)
