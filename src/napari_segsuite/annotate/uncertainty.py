"""*Correct this next*, Qt-free: where a model is least sure of itself, so the user corrects there first.

A map model's class probabilities (the first ``num_classes`` of its maps, a softmax for every task)
give each pixel an uncertainty: the entropy normalised to 0..1 (``"entropy"``) or one minus the margin
between the two likeliest classes (``"margin"``). An image is scored by the mean uncertainty of its
*foreground-ish* tiles (tiles where the model sees something other than class 0 on at least
:data:`FOREGROUND_SHARE` of the pixels, or anywhere uncertain; all tiles when none is), so a large
empty background does not dilute an ambiguous object. Volumes are scored on a few evenly spaced slices.
Object models (Mask R-CNN, SOLO, DeepMask) have no maps: :func:`rank_images` returns ``None`` for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..inference import predict_maps
from ..model_files import SegModel
from ..models.base import ObjectModel
from ..preprocess import infer_axes, normalize, to_slices
from ..progress import Progress, Work
from ..tasks import Segmentation

Region = tuple[slice, ...]

#: A tile counts as foreground-ish when this share of its pixels is likelier something else than class 0.
FOREGROUND_SHARE = 0.02
#: Slices of a volume that are scored (evenly spaced).
VOLUME_SLICES = 8


@dataclass
class Uncertainty:
    """How unsure a model is of one image.

    Attributes:
        score: Mean pixel uncertainty (0 sure .. 1 a coin toss) over the image's foreground-ish tiles.
        tile: The most uncertain tile: slices of the image's spatial axes (``(z, y, x)`` for a volume,
            ``z`` one slice wide).
        tile_score: That tile's mean uncertainty.
    """

    score: float
    tile: Region
    tile_score: float


def pixel_uncertainty(probs: np.ndarray, how: str = "entropy") -> np.ndarray:
    """Per-pixel uncertainty in 0..1 of ``(K, ...)`` class probabilities: normalised entropy or 1 - margin."""
    p = np.clip(np.asarray(probs, np.float32), 1e-7, 1.0)
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], np.float32)
    if how == "entropy":
        return (-(p * np.log(p)).sum(0) / np.log(k)).astype(np.float32)
    if how == "margin":
        top = np.sort(p, axis=0)[-2:]
        return (1.0 - (top[1] - top[0])).astype(np.float32)
    raise ValueError(f"Unknown uncertainty {how!r}; use entropy or margin.")


def tile_scores(probs: np.ndarray, tile: int = 128, how: str = "entropy") -> list[tuple[Region, float, bool]]:
    """``(region, mean uncertainty, foreground-ish)`` of each ``tile`` x ``tile`` tile of 2D ``(K, H, W)`` probabilities."""
    unc = pixel_uncertainty(probs, how)
    fg = probs[0] < 0.5
    h, w = unc.shape
    out: list[tuple[Region, float, bool]] = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            win = (slice(y, min(h, y + tile)), slice(x, min(w, x + tile)))
            u = float(unc[win].mean())
            out.append((win, u, bool(fg[win].mean() >= FOREGROUND_SHARE or unc[win].max() >= 0.5)))
    return out


def score_maps(planes: Sequence[tuple[int | None, np.ndarray]], tile: int = 128, how: str = "entropy") -> Uncertainty:
    """An image's :class:`Uncertainty` from ``(z or None, (K, H, W) probabilities)`` of its planes."""
    rows = [
        ((slice(z, z + 1), *r) if z is not None else r, u, f)
        for z, p in planes
        for r, u, f in tile_scores(p, tile, how)
    ]
    kept = [r for r in rows if r[2]] or rows
    top = max(kept, key=lambda r: r[1])
    return Uncertainty(float(np.mean([r[1] for r in kept])), top[0], top[1])


def image_uncertainty(
    model: SegModel, image: np.ndarray, *, rgb: bool | None = None, tile: int = 128, how: str = "entropy"
) -> Work[Uncertainty | None]:
    """The model's :class:`Uncertainty` on one image (``None`` for object models, which have no maps)."""
    if isinstance(model.module, ObjectModel):
        return None
    card = model.card
    axes = infer_axes(np.shape(image), rgb)
    x = normalize(to_slices(np.asarray(image), axes, card.in_channels), card.normalization)  # (S, C, H, W)
    planes: list[tuple[int | None, np.ndarray]] = []
    if card.spatial_dims == 3:  # a native 3D model: its maps of the whole volume
        maps = yield from predict_maps(model, np.ascontiguousarray(np.moveaxis(x, 0, 1)))
        planes += [(z, maps[: card.num_classes, z]) for z in _slices(maps.shape[1])]
    else:
        for z in _slices(len(x)) if axes.volume else [0]:
            maps = yield from predict_maps(model, x[z])
            planes.append((z if axes.volume else None, maps[: card.num_classes]))
    return score_maps(planes, tile, how)


def rank_images(
    model: SegModel, images: Sequence[np.ndarray], rgbs: Sequence[bool | None] | None = None, **kwargs: object
) -> Work[list[tuple[int, Uncertainty]] | None]:
    """Images by the model's uncertainty, most uncertain first, as ``(index, Uncertainty)``; ``None``
    for object models (the caller keeps its own order then)."""
    out = []
    for i, img in enumerate(images):
        yield Progress(i, len(images), f"uncertainty of image {i + 1}/{len(images)}")
        u = yield from image_uncertainty(model, img, rgb=None if rgbs is None else rgbs[i], **kwargs)  # type: ignore[arg-type]
        if u is None:
            return None
        out.append((i, u))
    return sorted(out, key=lambda r: -r[1].score)


def segment_most_uncertain(
    model: SegModel, images: Sequence[np.ndarray], rgbs: Sequence[bool | None]
) -> Work[tuple[int, Segmentation, list[tuple[int, Uncertainty]] | None]]:
    """Segment the image the model is least sure of (the first when there is one, or the model has no
    maps): ``(its index, its segmentation, the ranking or None)``, for "Segment next image"."""
    from ..inference import segment

    ranking = (yield from rank_images(model, images, rgbs)) if len(images) > 1 else None
    pick = ranking[0][0] if ranking else 0
    seg = yield from segment(model, np.asarray(images[pick]), rgb=rgbs[pick])
    return pick, seg, ranking


def _slices(n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, VOLUME_SLICES))})


__all__ = [
    "Uncertainty",
    "image_uncertainty",
    "pixel_uncertainty",
    "rank_images",
    "score_maps",
    "segment_most_uncertain",
    "tile_scores",
]
