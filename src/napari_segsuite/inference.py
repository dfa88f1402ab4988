"""Tiled sliding-window inference with blended overlaps, 2D models over 3D volumes slice by slice.

No Qt or napari here: :func:`predict` is a generator that yields :class:`~.progress.Progress` once per
batch of tiles (so a front end can cancel between tiles) and returns the label array.
"""

from __future__ import annotations

import logging
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .io import SegModel
from .preprocess import LabelMap, infer_axes, normalize, to_slices
from .progress import Progress, Work, map_progress
from .models.base import DenseHeads, ObjectModel
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
    if isinstance(module, DenseHeads):
        return module.activate(out.float())
    return out.float().softmax(1)


def _pad_input(image: np.ndarray, tiles: tuple[int, ...], divisible_by: int) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """The image as a tensor padded (reflect, or replicate when too small) at the end of each spatial axis
    to at least one tile, with tiles rounded up to ``divisible_by``; returns ``(x, tile shape, padded shape)``."""
    spatial = image.shape[1:]
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
    return x, ts, padded


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
        module: Maps ``(N, C, *tile)`` to ``(N, K, *tile)`` logits (softmax-ed here), or a
            :class:`~.models.base.DenseHeads` whose ``activate`` gives ``K`` blendable maps; in eval mode.
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
    x, ts, padded = _pad_input(image, tiles, divisible_by)
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


def core_bounds(starts: list[int], tile: int) -> list[tuple[float, float]]:
    """Each tile's share of one axis: from the middle of its overlap with the previous tile to the
    middle of its overlap with the next (the first starts at -inf, the last ends at +inf)."""
    cuts = [(a + tile + b) / 2 for a, b in zip(starts[:-1], starts[1:])]
    return list(zip([-math.inf, *cuts], [*cuts, math.inf]))


def predict_objects(
    module: ObjectModel,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    divisible_by: int = 1,
    device: torch.device | None = None,
    score_threshold: float = 0.5,
    min_size: int = 8,
) -> Work[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Objects of an :class:`~.models.base.ObjectModel` in one normalised 2D image, tile by tile, stitched.

    Tiles overlap by at least the model's ``max_object_size``; an object is kept only by the tile
    whose share of the image (:func:`core_bounds`) holds its centroid, so an object crossing a tile
    border comes out once and whole (it lies whole inside the tile that keeps it). Overlaps between
    objects are then resolved best score first (:func:`~.tasks.instance.paste`).

    Args:
        image: ``(C, H, W)`` float32, normalised.

    Returns:
        ``(ids, features)``: int32 ids 1..N and per-object ``index``, ``class`` (class index) and ``score``.
    """
    device = device or next(module.parameters()).device
    spatial = image.shape[1:]
    x, ts, padded = _pad_input(image, (tile, tile), divisible_by)
    ov = [min(max(int(t * overlap), module.max_object_size), t // 2) for t in ts]
    starts = [tile_starts(p, t, max(1, t - o)) for p, t, o in zip(padded, ts, ov)]
    cores = [dict(zip(st, core_bounds(st, t))) for st, t in zip(starts, ts)]
    coords = list(itertools.product(*starts))
    n_batches = math.ceil(len(coords) / batch_size)
    kept: list[instance.Obj] = []
    for b in range(n_batches):
        chunk = coords[b * batch_size:(b + 1) * batch_size]
        batch = torch.stack([x[:, y0:y0 + ts[0], x0:x0 + ts[1]] for y0, x0 in chunk]).to(device)
        with torch.inference_mode():
            dets = module.detect(batch, score_threshold=score_threshold)
        for (y0, x0), d in zip(chunk, dets):
            objs = instance.objects_from_masks(d["masks"].cpu().numpy(), d["scores"].float().cpu().numpy(),
                                               d["classes"].cpu().numpy(), offset=(y0, x0))
            (ylo, yhi), (xlo, xhi) = cores[0][y0], cores[1][x0]
            for o in objs:
                cy, cx = o.centroid
                if ylo <= cy < yhi and xlo <= cx < xhi and cy < spatial[0] and cx < spatial[1]:
                    kept.append(o)
        yield Progress(b + 1, n_batches, f"tiles {b + 1}/{n_batches}")
    return instance.paste(kept, spatial, min_size=min_size)


@dataclass
class Segmentation:
    """What :func:`segment` returns.

    Attributes:
        semantic: Class label values per pixel (semantic and panoptic models), ``(Y, X)`` or ``(Z, Y, X)``.
        instances: Object ids 1..N, 0 elsewhere (instance and panoptic models), int32, unique in the
            whole image or volume.
        features: Per object (instance models with classes, panoptic models): ``index`` (the id),
            ``class`` (the class's label value) and ``score``, in id order; a napari Labels layer's
            ``features`` table.
    """

    semantic: np.ndarray | None = None
    instances: np.ndarray | None = None
    features: dict[str, np.ndarray] | None = None

    @property
    def labels(self) -> np.ndarray:
        """The main result: object ids for instance models, class values otherwise."""
        return self.semantic if self.semantic is not None else self.instances


def segment_slice(model: SegModel, x: np.ndarray, *, tile: int | tuple[int, ...] = 512, overlap: float = 0.25,
                  batch_size: int = 4, device: torch.device | None = None, amp: bool = True) -> Work[Segmentation]:
    """Segment one normalised ``(C, H, W)`` image (or ``(C, D, H, W)`` volume for native 3D models),
    in class indices (not label values) and object ids, by the model's kind."""
    card = model.card
    module = model.module
    div = card.get("divisible_by", 1)
    if isinstance(module, ObjectModel):
        ids, feats = yield from predict_objects(module, x, tile=tile if isinstance(tile, int) else tile[-1],
                                                overlap=overlap, batch_size=batch_size, divisible_by=div, device=device)
        return Segmentation(instances=ids, features=feats)
    channels = card["num_classes"] + (3 if card.get("kind") == "panoptic" else 0)
    probs = yield from predict_probs(module, x, num_classes=channels, tile=tile, overlap=overlap,
                                     batch_size=batch_size, divisible_by=div, device=device, amp=amp)
    if card.get("kind") == "panoptic":
        from .tasks import panoptic

        sem, ids, feats = panoptic.postprocess(probs, tuple(card["build"].get("thing_classes", (1,))))
        return Segmentation(semantic=sem, instances=ids, features=feats)
    if card.get("kind") == "instance":
        return Segmentation(instances=instance.postprocess(probs))
    return Segmentation(semantic=semantic.postprocess(probs))


def _linked_features(per_slice: list[dict | None], stack2d: np.ndarray, stack3d: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per-object table of 3D objects from the tables of their 2D pieces (class: by pixel majority, score: mean)."""
    if all(f is None for f in per_slice):
        return None
    votes: dict[int, dict[int, int]] = {}
    scores: dict[int, list[float]] = {}
    for z, f in enumerate(per_slice):
        if f is None or not len(f["index"]):
            continue
        cls_of = dict(zip(f["index"].tolist(), f["class"].tolist()))
        score_of = dict(zip(f["index"].tolist(), f["score"].tolist()))
        pairs, counts = np.unique(np.stack([stack2d[z].ravel(), stack3d[z].ravel()]), axis=1, return_counts=True)
        for (i2, i3), n in zip(pairs.T.tolist(), counts.tolist()):
            if i2 and i3 and i2 in cls_of:
                v = votes.setdefault(i3, {})
                v[cls_of[i2]] = v.get(cls_of[i2], 0) + n
                scores.setdefault(i3, []).append(score_of[i2])
    ids = sorted(votes)
    return {"index": np.array(ids, np.int32),
            "class": np.array([max(votes[i], key=votes[i].get) for i in ids], np.int64),
            "score": np.array([np.mean(scores[i]) for i in ids], np.float32)}


def segment(
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
) -> Work[Segmentation]:
    """Segment a 2D image or a 3D volume with any model (2D models run slice by slice).

    Args:
        model: A loaded :class:`~.io.SegModel`.
        image: ``(Y, X)``, ``(Y, X, 3)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3)``, any numeric dtype.
        rgb: Force the colour reading of a trailing 3/4 axis (``None``: guess as napari does).
        tile, overlap, batch_size: Sliding-window settings (see :func:`predict_probs`).
        tile_z: Tile depth for native 3D models.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...; on CUDA out-of-memory the tile is halved and retried.
        amp: Mixed precision on CUDA.

    Yields:
        :class:`Progress` once per batch of tiles.

    Returns:
        A :class:`Segmentation` in the user's label values. Instance ids are unique in the whole image
        or volume: dense outputs are blended across tiles before objects form, object models' tiles are
        stitched (:func:`predict_objects`), and a volume's 2D objects are linked across slices.
    """
    card = model.card
    axes = infer_axes(np.shape(image), rgb)
    dev = pick_device(device)
    module = model.module.to(dev).eval()
    lmap = LabelMap(card["label_values"])
    slices = normalize(to_slices(image, axes, card["in_channels"]), card.get("normalization"))
    if card.get("spatial_dims", 2) == 3:  # native 3D: the whole (C, Z, Y, X) volume in 3D tiles
        volume = np.moveaxis(slices, 0, 1)
        probs = yield from map_progress(
            predict_probs(module, volume, num_classes=card["num_classes"], tile=(tile_z, tile, tile),
                          overlap=overlap, batch_size=max(1, batch_size // 2), device=dev, amp=amp),
            lambda p: Progress(p.step, p.total, f"3D {p.note}"),
        )
        if card.get("kind") == "instance":  # 3D watershed on the 3D maps
            ids = instance.postprocess(probs)
            return Segmentation(instances=ids if axes.volume else ids[0])
        labels3 = semantic.postprocess(probs)
        return Segmentation(semantic=lmap.to_values(labels3 if axes.volume else labels3[0]))
    n_slices = slices.shape[0]
    parts: list[Segmentation] = []
    step = 0
    for s in range(n_slices):
        while True:
            try:
                totals: list[int] = []

                def rebase(p: Progress, s: int = s) -> Progress:
                    totals[:] = [p.total]
                    note = f"slice {s + 1}/{n_slices}, {p.note}" if n_slices > 1 else p.note
                    return Progress(step + p.step, p.total * n_slices, note)

                part = yield from map_progress(
                    segment_slice(model, slices[s], tile=tile, overlap=overlap, batch_size=batch_size, device=dev,
                                  amp=amp), rebase)
                parts.append(part)
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
    out = Segmentation()
    if parts[0].semantic is not None:
        sem = np.stack([p.semantic for p in parts])
        out.semantic = lmap.to_values(sem if axes.volume else sem[0])
    if parts[0].instances is not None:
        stack2d = np.stack([p.instances for p in parts])
        if axes.volume:
            out.instances = instance.link_slices(stack2d)
            feats = _linked_features([p.features for p in parts], stack2d, out.instances)
        else:
            out.instances = stack2d[0]
            feats = parts[0].features
        if feats is not None:  # class indices -> the user's label values
            feats = {**feats, "class": np.asarray(card["label_values"])[feats["class"]]}
        out.features = feats
    return out


def predict(model: SegModel, image: np.ndarray, *, output: str = "values", **kwargs) -> Work[np.ndarray]:
    """The main label array of :func:`segment` (same arguments): object ids for instance models,
    class values otherwise (``output="classes"``: class indices 0..K-1 instead of values)."""
    result = yield from segment(model, image, **kwargs)
    labels = result.labels
    if output == "classes" and result.semantic is not None:
        return LabelMap(model.card["label_values"]).to_classes(labels)
    return labels


def segment_at(model: SegModel, image: np.ndarray, point: tuple[float, ...], *, rgb: bool | None = None,
               device: str | torch.device = "auto") -> tuple[np.ndarray, float]:
    """Click-to-segment: the object at ``point`` of a 2D image or of one slice of a volume.

    Works with models that can answer for a point (``mask_at``: DeepMask). The image is normalised
    as the model was trained; for a volume ``point`` is ``(z, y, x)`` and only slice ``z`` is read.

    Returns:
        ``(mask, score)``: a bool mask of the image's spatial shape (the object, in slice ``z`` for a
        volume) and the model's confidence in 0..1.

    Raises:
        ValueError: the model cannot segment from a point.
    """
    module = model.module
    if not hasattr(module, "mask_at"):
        pointable = "deepmask"
        raise ValueError(f"Model {model.name!r} cannot segment from a click; train a {pointable} model for that.")
    axes = infer_axes(np.shape(image), rgb)
    spatial = axes.spatial_shape(np.shape(image))
    z = int(point[0]) if axes.volume else None
    plane = np.asarray(image[z]) if axes.volume else np.asarray(image)
    yx = tuple(point[-2:])
    x = normalize(to_slices(plane, infer_axes(plane.shape, axes.rgb), model.card["in_channels"]),
                  model.card.get("normalization"))
    dev = pick_device(device)
    module.to(dev).eval()
    with torch.inference_mode():
        mask, score = module.mask_at(torch.from_numpy(x).to(dev), yx)
    mask = mask.cpu().numpy().astype(bool)
    if z is None:
        return mask, float(score)
    out = np.zeros(spatial, bool)
    out[z] = mask
    return out, float(score)
