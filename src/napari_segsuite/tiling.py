"""Sliding-window inference: one tile loop for map models (blended) and object models (stitched).

Qt-free generators yielding :class:`~.progress.Progress` once per batch of tiles, so a front end can
cancel between tiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from .layout import autocast_dtype, inference_module
from .models.base import ObjectModel
from .progress import Progress, Work
from .tasks import instance

Corner = tuple[int, ...]

#: Default overlap of neighbouring tiles, in pixels: a margin for the network's border effects, which
#: do not grow with the tile (a share of the tile would cost more pixels for nothing on large tiles).
OVERLAP = 32


def margin(tile: int, overlap: float) -> int:
    """Overlap in pixels along an axis of tiles ``tile`` long: ``overlap`` >= 1 is pixels, at most a
    quarter of the tile (small tiles, e.g. a volume's Z, keep the share they had); below 1 a share of
    the tile, at most half."""
    if overlap >= 1:
        return min(int(overlap), tile // 4)
    return max(0, min(int(tile * overlap), tile // 2))


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


def core_bounds(starts: list[int], tile: int) -> list[tuple[float, float]]:
    """Each tile's share of one axis: from the middle of its overlap with the previous tile to the
    middle of its overlap with the next (the first starts at -inf, the last ends at +inf)."""
    cuts = [(a + tile + b) / 2 for a, b in zip(starts[:-1], starts[1:])]
    return list(zip([-math.inf, *cuts], [*cuts, math.inf]))


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def pad_input(
    image: np.ndarray, tiles: tuple[int, ...], divisible_by: int, overlap: float | None = None
) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """The image as a tensor padded (reflect, or replicate when too small) at the end of each spatial axis
    to at least one tile, with tiles as :func:`tile_shape` makes them; returns ``(x, tile shape, padded shape)``."""
    spatial = tuple(image.shape[1:])
    ts, padded = tile_shape(spatial, tiles, divisible_by, overlap)
    return pad_to(image, padded, pad_mode(spatial, padded)), ts, padded


def plan_tiles(
    spatial: tuple[int, ...],
    tiles: tuple[int, ...],
    batch_size: int,
    divisible_by: int,
    overlap: float,
    cpu: bool = False,
) -> tuple[tuple[int, ...], int]:
    """The tiles and batch size a map model's sliding window runs with.

    On the CPU (``cpu``), 2D tiles as asked, one per batch: a quarter of the activations in memory at
    a time, for the same speed (a UNet over 2048- and 4096-pixel images, 1 and 2 threads: within 3 %
    of the plan below, with freed pages reused, :mod:`.heap`; without that reuse it was up to 1.2x
    faster). Elsewhere, 2D tiles twice as large as asked, four times fewer per batch (the same pixels
    in flight, so about the same memory), where that computes fewer pixels over the whole image: fewer
    overlap pixels and no short last batch to fill. The whole-image and the blockwise paths both plan
    here, so they keep the same tiles."""
    best = (tiles, batch_size)
    if cpu and len(tiles) == 2:
        return tiles, 1
    if len(tiles) != 2 or batch_size < 4:
        return best

    def cost(ts: tuple[int, ...], bs: int) -> int:
        shape, padded = tile_shape(spatial, ts, divisible_by, overlap)
        n = math.prod(len(s) for s in grid_starts(padded, shape, overlap))
        return (-(-n // bs) * bs if n > 1 else 1) * math.prod(shape)

    big = (tuple(2 * t for t in tiles), batch_size // 4)
    return big if cost(*big) < cost(*best) else best


def tile_shape(
    spatial: tuple[int, ...], tiles: tuple[int, ...], divisible_by: int, overlap: float | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tile shape (rounded up to ``divisible_by``, no larger than the image needs) and the padded image shape.

    With ``overlap`` (a map model's sliding window, :func:`grid_starts`), each axis takes as few tiles
    as cover it with at least that overlap, and the tiles shrink to what they need to cover it: an
    image of 4096 pixels in tiles of 512 with a 32-pixel overlap takes 9 tiles of 484, not 9 of 512.
    """
    m = max(1, divisible_by)
    ts = []
    for t, n in zip(tiles, spatial):
        t = _round_up(min(t, n), m)
        o = margin(t, overlap) if overlap is not None else 0
        if overlap is not None and n > t:
            k = math.ceil((n - o) / (t - o))
            t = min(t, _round_up(math.ceil((n + (k - 1) * o) / k), m))
        ts.append(t)
    return tuple(ts), tuple(max(n, t) for n, t in zip(spatial, ts))


def pad_mode(spatial: tuple[int, ...], padded: tuple[int, ...]) -> str:
    """How an image of ``spatial`` shape is padded to ``padded``: reflect, or replicate when it is too small."""
    return "reflect" if all(p - n < n for n, p in zip(spatial, padded)) else "replicate"


def pad_to(image: np.ndarray, padded: tuple[int, ...], mode: str) -> torch.Tensor:
    """``(C, *spatial)`` as a tensor padded at the end of each spatial axis to ``padded``."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    spatial = tuple(image.shape[1:])
    if tuple(padded) != spatial:
        pads: list[int] = []
        for n, p in zip(reversed(spatial), reversed(padded)):
            pads += [0, p - n]
        x = torch.nn.functional.pad(x[None], pads, mode=mode)[0]
    return x


def run_tiles(
    x: torch.Tensor,
    ts: tuple[int, ...],
    starts: Sequence[list[int]],
    batch_size: int,
    device: torch.device,
    fn: Callable[[list[Corner], torch.Tensor], None],
    *,
    full_batches: bool | None = None,
    coords: list[Corner] | None = None,
) -> Work[None]:
    """The one tile loop: cut ``x`` ``(C, *padded)`` into tiles ``ts`` at every combination of
    ``starts`` (or at ``coords``), and call ``fn(corners, batch)`` per batch of up to ``batch_size``
    tiles on ``device``.

    ``full_batches`` (default: when there is more than one tile) fills a short last batch with copies
    of its last tile (their outputs are dropped): a network on the CPU may give a tile slightly
    different numbers in a batch of another size, and the blockwise path (:mod:`.blockwise`), which
    batches the same tiles differently, must give the same bits as the whole-image path.
    """
    coords = list(itertools.product(*starts)) if coords is None else coords
    full = len(coords) > 1 if full_batches is None else full_batches
    n_batches = math.ceil(len(coords) / batch_size)
    for b in range(n_batches):
        chunk = coords[b * batch_size : (b + 1) * batch_size]
        tiles = [x[(slice(None), *(slice(c, c + t) for c, t in zip(corner, ts)))] for corner in chunk]
        if full and len(tiles) < batch_size:
            tiles += [tiles[-1]] * (batch_size - len(tiles))
        fn(chunk, torch.stack(tiles).to(device))
        yield Progress(b + 1, n_batches, f"tiles {b + 1}/{n_batches}")


def grid_starts(padded: Sequence[int], ts: Sequence[int], overlap: float) -> list[list[int]]:
    """Tile starts per axis of a map model's sliding window over a (padded) image: the one tile grid of
    :func:`predict_probs` and of the blockwise path."""
    return [tile_starts(p, t, max(1, t - margin(t, overlap))) for p, t in zip(padded, ts)]


def softmax(out: torch.Tensor) -> torch.Tensor:
    return out.float().softmax(1)


def predict_probs(
    module: torch.nn.Module,
    image: np.ndarray,
    *,
    num_classes: int,
    tile: int | tuple[int, ...] = 512,
    overlap: float = OVERLAP,
    batch_size: int = 4,
    divisible_by: int = 1,
    device: torch.device | None = None,
    amp: bool = True,
    activate: Callable[[torch.Tensor], torch.Tensor] = softmax,
    flips: Sequence[tuple[int, ...]] = ((),),
    unmirror: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor] | None = None,
    transposed: bool = False,
    untranspose: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Work[np.ndarray]:
    """Blended maps of a map model over one normalised 2D image or 3D volume, tile by tile.

    Args:
        module: Maps ``(N, C, *tile)`` to ``(N, M, *tile)``; in eval mode.
        image: ``(C, H, W)`` or ``(C, D, H, W)`` float32, already normalised.
        num_classes: ``M``, the number of maps after ``activate``.
        tile: Tile edge per spatial axis (an int applies to all), rounded up to ``divisible_by``;
            an image no larger than the tile runs whole. 2D tiles may run twice as large, four times
            fewer per batch (:func:`plan_tiles`).
        overlap: Pixels (>= 1) or share of the tile (< 1) shared by neighbours, blended with
            :func:`blend_window`; tiles shrink to what covering the image takes (:func:`tile_shape`).
        activate: Raw output to maps that average across tiles (the task's; default softmax).
        flips: Test-time augmentation: each tile also runs mirrored along these tensor axes (negative:
            from the end, e.g. ``(-1,)`` X, ``(-2, -1)`` Y and X) and the mirrored maps, mirrored back,
            are averaged. ``((),)``: the tile as it is, once. Memory does not grow with the flips.
        unmirror: Brings maps of a mirrored tile back (the task's :meth:`~.tasks.Task.unmirror`);
            default: mirror them back.
        transposed: Each of ``flips`` also runs on the tile with its last two axes swapped (Y and X:
            twice the passes), brought back by ``untranspose`` (the task's
            :meth:`~.tasks.Task.untranspose`; default: swap the maps' last two axes back).

    Yields:
        :class:`Progress` per batch of tiles.

    Returns:
        ``(M, *spatial)`` float32 maps.
    """
    device = device or next(module.parameters()).device
    spatial = image.shape[1:]
    tiles = (tile,) * len(spatial) if isinstance(tile, int) else tuple(tile)
    tiles, batch_size = plan_tiles(tuple(spatial), tiles, batch_size, divisible_by, overlap, device.type == "cpu")
    x, ts, padded = pad_input(image, tiles, divisible_by, overlap)
    starts = grid_starts(padded, ts, overlap)
    probs = yield from blend_tiles(
        module,
        x,
        ts,
        starts,
        overlap,
        num_classes=num_classes,
        batch_size=batch_size,
        device=device,
        amp=amp,
        activate=activate,
        flips=flips,
        unmirror=unmirror,
        transposed=transposed,
        untranspose=untranspose,
    )
    crop = tuple(slice(0, n) for n in spatial)
    return probs[(slice(None), *crop)].numpy()


def blend_tiles(
    module: torch.nn.Module,
    x: torch.Tensor,
    ts: tuple[int, ...],
    starts: Sequence[list[int]],
    overlap: float,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
    activate: Callable[[torch.Tensor], torch.Tensor],
    full_batches: bool | None = None,
    flips: Sequence[tuple[int, ...]] = ((),),
    unmirror: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor] | None = None,
    transposed: bool = False,
    untranspose: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shared: tuple[TileCache, Callable[[Corner], Hashable]] | None = None,
    keep: tuple[slice, ...] | None = None,
) -> Work[torch.Tensor]:
    """Blended ``(M, *x.shape[1:])`` maps of the tiles at ``starts`` (corners in ``x``'s own coordinates),
    accumulated tile by tile in the order of :func:`run_tiles` (pixels no tile covers come out NaN);
    ``flips``, ``unmirror``, ``transposed`` and ``untranspose`` as in :func:`predict_probs`.
    ``shared``: a :class:`TileCache` and each corner's key in it; tiles found there are not computed
    again. ``keep``: blend only over this box of ``x`` (what the caller needs; the maps come back
    over it alone): the same values there, with less memory and work than blending all the tiles reach."""
    weight = torch.from_numpy(blend_window(ts, tuple(margin(t, overlap) for t in ts)))
    module = inference_module(module)  # batch norms folded into their convolutions
    low = autocast_dtype(device, amp)  # the arithmetic: bfloat16 where it pays (layout.py), else float32
    swaps = (False, True) if transposed else (False,)
    keep = keep or tuple(slice(0, n) for n in x.shape[1:])
    region = tuple(k.stop - k.start for k in keep)
    acc = torch.zeros((num_classes, *region))
    norm = torch.zeros(region)
    coords = list(itertools.product(*starts))
    todo = coords if shared is None else [c for c in coords if shared[1](c) not in shared[0]]
    ready: dict[Corner, torch.Tensor] = {}
    done, whole = 0, tuple(slice(0, t) for t in ts)

    def flush() -> None:  # accumulate in the order of ``coords`` whatever was computed when
        nonlocal done
        while done < len(coords):
            corner = coords[done]
            if shared is not None:
                got = shared[0].use(shared[1](corner), ready.pop(corner, None))
            else:
                got = (ready.pop(corner), whole) if corner in ready else None
            if got is None:
                return
            m, part = got  # the tile's maps over ``part`` of it (all of it but for a kept tile)
            done += 1
            lo = [max(c + p.start, k.start) for c, p, k in zip(corner, part, keep)]  # in ``x``
            hi = [min(c + p.stop, k.stop) for c, p, k in zip(corner, part, keep)]
            if any(a >= b for a, b in zip(lo, hi)):
                continue
            w = tuple(slice(a - k.start, b - k.start) for a, b, k in zip(lo, hi, keep))  # in ``acc``
            sub = tuple(slice(a - c - p.start, b - c - p.start) for a, b, c, p in zip(lo, hi, corner, part))
            wt = weight[part][sub]
            acc[(slice(None), *w)] += m[(slice(None), *sub)] * wt
            norm[w] += wt

    def blend(corners: list[Corner], batch: torch.Tensor) -> None:
        total: torch.Tensor | None = None
        for dims, swap in itertools.product(flips, swaps):
            with torch.inference_mode(), torch.autocast(device.type, dtype=low, enabled=low is not None):
                inp = batch.flip(dims) if dims else batch
                out = module(inp.transpose(-2, -1).contiguous() if swap else inp)
                m_ = activate(out[: len(corners)].float())
                if swap:  # back to the mirrored tile first, then to the tile itself
                    m_ = untranspose(m_) if untranspose is not None else m_.transpose(-2, -1)
                if dims:
                    m_ = unmirror(m_, dims) if unmirror is not None else m_.flip(dims)
                total = m_ if total is None else total + m_
        assert total is not None
        maps = (total / (len(flips) * len(swaps))).contiguous().cpu()
        ready.update(zip(corners, maps))
        flush()

    yield from run_tiles(x, ts, starts, batch_size, device, blend, full_batches=full_batches, coords=todo)
    flush()
    return acc.div_(norm)


class TileCache:
    """Maps of tiles that several blocks blend (a tile under a block border), computed by the first
    and kept until the last has used them: ``uses`` counts the blocks that will ask for each key,
    ``parts`` says which part of the tile they need (the rest is not kept; default: all of it)."""

    def __init__(self, uses: dict[Hashable, int], parts: dict[Hashable, tuple[slice, ...]] | None = None) -> None:
        self.uses = dict(uses)
        self.parts = parts or {}
        self.maps: dict[Hashable, tuple[torch.Tensor, tuple[slice, ...]]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self.maps

    def use(self, key: Hashable, maps: torch.Tensor | None) -> tuple[torch.Tensor, tuple[slice, ...]] | None:
        """One block's use of tile ``key``: the maps it just computed, or ``None`` to take the kept ones
        (``None`` back when there are none yet); returns the maps and the part of the tile they cover."""
        if maps is None and key not in self.maps:
            return None
        left = self.uses.get(key, 1) - 1
        self.uses[key] = left
        if maps is None:
            got = self.maps.pop(key)
        else:
            got = (maps, tuple(slice(0, n) for n in maps.shape[1:]))
        if left > 0:
            part = self.parts.get(key, got[1])
            self.maps[key] = (got[0][(slice(None), *part)].clone(), part) if maps is not None else got
        return got


def predict_objects(
    module: ObjectModel,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: float = OVERLAP,
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
    x, ts, padded = pad_input(image, (tile, tile), divisible_by)
    ov = [min(max(margin(t, overlap), module.max_object_size), t // 2) for t in ts]
    starts = [tile_starts(p, t, max(1, t - o)) for p, t, o in zip(padded, ts, ov)]
    cores = [dict(zip(st, core_bounds(st, t))) for st, t in zip(starts, ts)]
    kept: list[instance.Obj] = []

    def keep(corners: list[Corner], batch: torch.Tensor) -> None:
        with torch.inference_mode():
            dets = module.detect(batch, score_threshold=score_threshold)
        for (y0, x0), d in zip(corners, dets):
            objs = instance.objects_from_masks(
                d["masks"].cpu().numpy(), d["scores"].float().cpu().numpy(), d["classes"].cpu().numpy(), offset=(y0, x0)
            )
            (ylo, yhi), (xlo, xhi) = cores[0][y0], cores[1][x0]
            for o in objs:
                cy, cx = o.centroid
                if ylo <= cy < yhi and xlo <= cx < xhi and cy < spatial[0] and cx < spatial[1]:
                    kept.append(o)

    yield from run_tiles(x, ts, starts, batch_size, device, keep)
    return instance.paste(kept, (spatial[0], spatial[1]), min_size=min_size)
