"""What a click reads, computed once per image (or per slice of a volume): the smoothed image for the
classical fallback, and a model's per-pixel maps (foreground probability, object ids) or, for a
model that answers for a point (DeepMask), the normalised image it answers from.

No Qt or napari here. :func:`compute_maps` is a generator (it yields the inference engine's
:class:`~napari_segsuite.progress.Progress` once per batch of tiles) so a front end runs it in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi

from ..card import ModelCard
from ..inference import pick_device, predict_maps, segment_slice
from ..model_files import SegModel
from ..models.base import ObjectModel
from ..preprocess import infer_axes, normalize, to_slices
from ..progress import Work
from ..tasks import get_task
from ..tasks.instance import has_distance
from .regions import _keep_seeded

#: Object diameter (pixels) assumed when nothing better is known (no model, no objects found).
DEFAULT_SIZE = 24.0
#: The foreground probability a clicked object's outline follows by default: a map model's objects
#: (thresholded at 0.5 to be found) come out about a pixel ring too large for an outline (median
#: area 1.1 times the true one for three U-Nets on real nuclei; 0.7 gave the best first-click IoU
#: for all three, on the held-out half and, within 0.005, on the training half).
OUTLINE = 0.7


@dataclass
class PlaneMaps:
    """Everything a click on one 2D plane reads; arrays are ``(H, W)``.

    Attributes:
        smooth: The image in grey, percentile-normalised (about 0..1) and Gaussian-smoothed (float32).
        fg: The model's foreground probability (1 - P(class 0)), float32, or ``None`` without a map model.
        instances: The model's objects (int32 ids, 0 background), or ``None``.
        boxes: Bounding slices of each id in ``instances`` (``boxes[i - 1]`` for id ``i``).
        size: Typical object diameter in pixels (median of the model's objects, else :data:`DEFAULT_SIZE`).
        x: The normalised ``(C, H, W)`` image for a point model (``mask_at``), else ``None``.
        model: The model the maps come from (``None``: classical).
        threshold: The foreground probability the model's objects start at (its calibrated mask
            threshold where it has one).
        outline: The foreground probability a clicked object's outline follows, as a share of the
            object's peak (the card's ``outline_threshold``, else :data:`OUTLINE`, at least
            ``threshold``); clicks move it per object.
    """

    smooth: np.ndarray
    fg: np.ndarray | None = None
    instances: np.ndarray | None = None
    boxes: list[tuple[slice, slice] | None] = field(default_factory=list)
    size: float = DEFAULT_SIZE
    x: np.ndarray | None = None
    model: SegModel | None = None
    threshold: float = 0.5
    outline: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.smooth.shape[0]), int(self.smooth.shape[1]))

    @property
    def kind(self) -> str:
        """``"maps"`` (cached object maps), ``"point"`` (a model asked per click) or ``"classical"``."""
        if self.instances is not None:
            return "maps"
        return "point" if self.x is not None else "classical"


def _grey(plane: np.ndarray, rgb: bool | None) -> np.ndarray:
    arr = np.asarray(plane)
    if arr.ndim == 3 and infer_axes(arr.shape, rgb).rgb:
        arr = arr[..., :3].astype(np.float32).mean(-1)
    if arr.ndim != 2:
        raise ValueError(
            f"Annotation works on one 2D plane, (Y, X) or (Y, X, 3); got shape {arr.shape}. Pass one slice of a volume."
        )
    return arr.astype(np.float32)


def smooth_image(plane: np.ndarray, rgb: bool | None = None, sigma: float = 1.0) -> np.ndarray:
    """The grey, normalised (1st-99.8th percentile to 0..1) and smoothed ``(H, W)`` float32 image."""
    grey = _grey(plane, rgb)
    grey = np.nan_to_num(grey, nan=float(np.nanmin(grey)) if np.isfinite(grey).any() else 0.0)
    sample = grey.ravel()[:: max(1, grey.size // 1_000_000)]
    lo, hi = np.percentile(sample, [1.0, 99.8])
    norm = (grey - lo) / (hi - lo if hi > lo else 1.0)
    return ndi.gaussian_filter(norm, sigma).astype(np.float32)


def typical_size(instances: np.ndarray) -> float:
    """Median equivalent diameter (pixels) of the objects in ``instances`` (:data:`DEFAULT_SIZE` if none)."""
    areas = np.bincount(instances.ravel())[1:]
    areas = areas[areas > 0]
    if not len(areas):
        return DEFAULT_SIZE
    return float(max(4.0, 2.0 * np.sqrt(np.median(areas) / np.pi)))


def classical_maps(plane: np.ndarray, rgb: bool | None = None) -> PlaneMaps:
    """Maps for the classical fallback (no model): the smoothed image only."""
    return PlaneMaps(smooth=smooth_image(plane, rgb))


def maps_from_instances(smooth: np.ndarray, instances: np.ndarray, fg: np.ndarray | None = None) -> PlaneMaps:
    """:class:`PlaneMaps` from object ids (and a foreground probability; default: the objects themselves)."""
    ids = np.asarray(instances).astype(np.int32)
    prob = (ids > 0).astype(np.float32) if fg is None else np.asarray(fg, np.float32)
    return PlaneMaps(smooth=smooth, fg=prob, instances=ids, boxes=list(ndi.find_objects(ids)), size=typical_size(ids))


def compute_maps(
    model: SegModel | None,
    plane: np.ndarray,
    *,
    rgb: bool | None = None,
    tile: int = 512,
    device: str | torch.device = "auto",
) -> Work[PlaneMaps]:
    """The maps of one ``(Y, X)`` or ``(Y, X, 3)`` plane, for :class:`~.click.AnnotationSession`.

    - Map models (``unet-instance``, semantic models): the task's blended maps once; ``fg`` is
      ``1 - P(class 0)`` and the objects are the task's post-processing (connected regions of the
      foreground classes for a semantic model).
    - Object models (Mask R-CNN, SOLO): their objects, stitched over tiles.
    - Point models (DeepMask, ``mask_at``): only the normalised image; each click asks the model.
    - ``None``: the classical fallback.

    Yields:
        :class:`Progress` once per batch of tiles.
    """
    smooth = smooth_image(plane, rgb)
    if model is None:
        return PlaneMaps(smooth=smooth)
    card = model.card
    if card.spatial_dims != 2:
        raise ValueError(f"Model {model.name!r} is a 3D model; annotation clicks need a 2D model (or none).")
    arr = np.asarray(plane)
    x = normalize(to_slices(arr, infer_axes(arr.shape, rgb), card.in_channels), card.normalization)[0]
    dev = pick_device(device)
    model.module.to(dev).eval()
    if hasattr(model.module, "mask_at"):
        return PlaneMaps(smooth=smooth, x=x, model=model)
    if isinstance(model.module, ObjectModel):
        seg = yield from segment_slice(model, x, tile=tile, device=dev)
        maps = maps_from_instances(smooth, np.asarray(seg.instances))
    else:
        probs = yield from predict_maps(model, x, tile=tile, device=dev)
        seg = get_task(card.kind).postprocess(probs, _click_card(card))
        ids = seg.instances if seg.instances is not None else ndi.label(np.asarray(seg.semantic) > 0)[0]
        maps = maps_from_instances(smooth, np.asarray(ids), 1.0 - probs[0])
        maps.threshold = float(card.postprocessing.get("mask_threshold", 0.5))
        maps.outline = float(card.postprocessing.get("outline_threshold", max(OUTLINE, maps.threshold)))
    maps.model = model
    return maps


def _click_card(card: ModelCard) -> ModelCard:
    """The card whose post-processing makes the objects clicks start from: an instance model with a
    distance map seeds them from it even where its card chose the interior map for detection (each
    object's own territory; first-click IoU 0.85 -> 0.87 on real nuclei for three such models), with
    today's seeding, as the card chose no distance settings."""
    pp = card.postprocessing
    if not has_distance(card) or pp.get("use_distance", True):
        return card
    keep = {k: v for k, v in pp.items() if k in ("mask_threshold", "dist_h")}  # today's seeding (h-maxima)
    return card.model_copy(update={"postprocessing": keep})


def point_mask(maps: PlaneMaps, y: int, x: int) -> np.ndarray:
    """A point model's object at ``(y, x)`` (``segment_at``'s answer on the cached normalised image), bool ``(H, W)``."""
    if maps.model is None or maps.x is None:
        raise ValueError("These maps come from no point model (DeepMask).")
    module = maps.model.module
    dev = next(module.parameters()).device
    with torch.inference_mode():
        mask, _score = module.mask_at(torch.from_numpy(maps.x[None]).to(dev), (float(y), float(x)))  # type: ignore[operator]
    return mask.cpu().numpy().astype(bool)


#: The outlines :func:`outline_threshold` tries (shares of each object's peak foreground).
OUTLINE_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)


def fit_outline(pairs: list[tuple[PlaneMaps, np.ndarray]], grid: tuple[float, ...] = OUTLINE_GRID) -> float | None:
    """The outline (of :data:`OUTLINE_GRID`) whose first clicks match the true objects best: per
    ``(maps, truth ids)`` pair, a click at each true object's deepest pixel outlines the model's object
    there; the mean IoU over all objects decides (ties: the nearer to :data:`OUTLINE`). ``None``
    without map-model maps or objects."""
    scores = np.zeros(len(grid))
    count = 0
    for maps, truth in pairs:
        if maps.fg is None or maps.instances is None:
            continue
        truth = np.asarray(truth)
        for i, box in enumerate(ndi.find_objects(truth.astype(np.int64)), 1):
            if box is None:
                continue
            box = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
            obj = truth[box] == i
            depth = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(depth.argmax()), depth.shape)
            inst = maps.instances[box[0].start + y, box[1].start + x]
            count += 1
            if not inst:
                continue
            own_box = maps.boxes[inst - 1]
            if own_box is None:
                continue
            win = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, own_box))
            own = maps.instances[win] == inst
            fg = maps.fg[win]
            true = truth[win] == i
            peak = float(fg[own].max())
            seed = [(box[0].start + y - win[0].start, box[1].start + x - win[1].start)]
            for k, rel in enumerate(grid):
                mask = _keep_seeded(own & (fg > rel * peak), seed)
                union = int((mask | true).sum())
                scores[k] += (mask & true).sum() / union if union else 0.0
    if not count:
        return None
    best = scores.max()
    near = [k for k in range(len(grid)) if scores[k] >= best - 1e-9]
    return float(grid[min(near, key=lambda k: abs(grid[k] - OUTLINE))])


def outline_threshold(
    model: SegModel,
    samples: list[tuple[np.ndarray, np.ndarray]],
    *,
    rgb: bool | None = None,
    device: str | torch.device = "auto",
) -> float | None:
    """The outline a map model's clicked objects should follow (its card's
    ``postprocessing["outline_threshold"]``), from ``(image plane, true ids)`` pairs it was not trained
    on (its validation images): see :func:`fit_outline`. ``None`` for models without maps (object and
    point models) or without objects."""
    from ..progress import drive

    pairs = []
    for image, truth in samples:
        maps = drive(compute_maps(model, image, rgb=rgb, device=device))
        if maps.kind != "maps":
            return None
        pairs.append((maps, np.asarray(truth)))
    return fit_outline(pairs)
