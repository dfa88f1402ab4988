"""Planning a blockwise run (:mod:`.blockwise`): the settings every block shares (:class:`Job`: tile
grid, normalisation), the blocks (:func:`plan_blocks`: cores at tile centres, halos, what each reads)
and the tiles more than one block blends (:func:`tile_cache`)."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from .inference import pick_device
from .lazy_io import norm_stats
from .model_files import SegModel
from .models.base import ObjectModel
from .preprocess import NormStats, infer_axes
from .stitch import Box
from .tasks import get_task
from .tiling import OVERLAP, TileCache, grid_starts, plan_tiles, tile_shape

#: Default block edge (pixels): about the memory of a 2048 x 2048 image in memory, whatever the image's size.
BLOCK = 2048
#: Halo (pixels) around a block's core over which objects are formed and matched with the neighbours'.
HALO = 64


@dataclass
class Job:
    """What every block needs (picklable: it travels to dask workers)."""

    spatial: tuple[int, ...]
    rgb: bool
    volume: bool
    per_slice: bool  # a 2D model over a volume
    objects: bool  # an ObjectModel
    stats: NormStats | None
    tile: int = 512
    tile_z: int = 32
    overlap: float = OVERLAP
    batch_size: int = 4
    device: str = "auto"
    amp: bool = True
    ts: tuple[int, ...] = ()
    padded: tuple[int, ...] = ()
    starts: list[list[int]] = field(default_factory=list)
    wants_ids: bool = False
    wants_classes: bool = False
    tta: bool | None = None  # test-time augmentation; None: as the card says


@dataclass(frozen=True)
class Block:
    index: tuple[int, ...]
    core: Box
    region: Box  # core plus halo: where maps are made and post-processed
    read: Box  # what is read: every tile of the grid touching ``region``


def _cuts(n: int, block: int, centres: list[int]) -> list[int]:
    """Borders ``[0, ..., n]`` of blocks about ``block`` long along an axis of length ``n``, each at one
    of ``centres`` (tile centres) when there are any, so only the tile under a border is read twice."""
    cuts = [0]
    while cuts[-1] + block < n:  # each block about ``block`` from the last border (no drift to longer ones)
        target = cuts[-1] + block
        options = [c for c in centres if cuts[-1] < c < n] if centres else [target]
        if not options:
            break
        cuts.append(min(options, key=lambda c: abs(c - target)))
    return [*cuts, n]


def plan_blocks(job: Job, block: int | tuple[int, ...], halo: int | tuple[int, ...]) -> list[Block]:
    """The blocks of ``job``'s image in row-major order (see the module text)."""
    nd = len(job.spatial)
    blocks = (block,) * nd if isinstance(block, int) else tuple(block)
    halos = (halo,) * nd if isinstance(halo, int) else tuple(halo)
    tiled = nd - len(job.ts)  # axes before the tiled ones (Z of a 2D model over a volume)
    cuts = []
    for ax, n in enumerate(job.spatial):
        t = ax - tiled
        centres = [s + job.ts[t] // 2 for s in job.starts[t]] if t >= 0 and job.starts else []
        edge = blocks[ax] if n <= blocks[ax] or not centres else max(job.ts[t], blocks[ax] - job.ts[t])  # read box
        cuts.append(_cuts(n, edge, centres))
    out = []
    for index in itertools.product(*(range(len(c) - 1) for c in cuts)):
        core = tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, index))
        region = tuple(
            slice(max(0, s.start - h), min(n, s.stop + h)) if job.wants_ids else s
            for s, h, n in zip(core, halos, job.spatial)
        )
        read = list(region)
        for ax in range(tiled, nd):
            if job.starts and not job.objects:
                t, r = ax - tiled, region[ax]
                hit = [s for s in job.starts[t] if s < r.stop and s + job.ts[t] > r.start]
                read[ax] = slice(hit[0], min(job.spatial[ax], hit[-1] + job.ts[t]))
        out.append(Block(tuple(index), core, region, tuple(read)))
    return out


def make_job(model: SegModel, data: Any, **settings: Any) -> Job:
    """The settings every block shares, the tile grid and the normalisation (read once, here)."""
    card = model.card
    axes = infer_axes(tuple(data.shape), settings.pop("rgb", None))
    spatial = axes.spatial_shape(tuple(data.shape))
    objects = isinstance(model.module, ObjectModel)
    task = get_task(card.kind)
    job = Job(
        spatial=spatial,
        rgb=axes.rgb,
        volume=axes.volume,
        per_slice=axes.volume and card.spatial_dims == 2,
        objects=objects,
        stats=norm_stats(data, axes.rgb, card.in_channels, card.normalization),
        wants_ids=objects or task.gives_ids,
        wants_classes=not objects and task.gives_classes,
        **settings,
    )
    if job.tta is None:
        job.tta = card.tta
    tiled = spatial[1:] if job.per_slice else spatial
    tiles: tuple[int, ...] = (job.tile_z, job.tile, job.tile) if len(tiled) == 3 else (job.tile, job.tile)
    if not objects:  # the whole-image path's tiles (object models tile their own way)
        cpu = pick_device(job.device).type == "cpu"
        tiles, job.batch_size = plan_tiles(tuple(tiled), tiles, job.batch_size, card.divisible_by, job.overlap, cpu)
    job.ts, job.padded = tile_shape(tuple(tiled), tiles, card.divisible_by, job.overlap)
    job.starts = [] if objects else grid_starts(job.padded, job.ts, job.overlap)
    return job


def block_tiles(job: Job, block: Block) -> list[tuple[int, ...]]:
    """Keys ``(slice, *corner)`` of the grid's tiles a map model's block blends (corners in the image;
    the slice is the Z of a 2D model over a volume, else 0): what its :class:`TileCache` counts."""
    if job.objects or not job.starts:
        return []
    tiled = len(job.spatial) - len(job.ts)
    region = block.region[tiled:]
    hit = [[s for s in st if s < g.stop and s + t > g.start] for st, t, g in zip(job.starts, job.ts, region)]
    zs = range(block.region[0].start, block.region[0].stop) if job.per_slice else range(1)
    return [(z, *corner) for z in zs for corner in itertools.product(*hit)]


def tile_cache(job: Job, blocks: list[Block]) -> TileCache:
    """A cache of the tiles more than one of ``blocks`` blends (those under block borders)."""
    uses: dict[Hashable, int] = {}
    parts: dict[Hashable, list[tuple[int, int]]] = {}  # per key: the tile's span the later blocks need
    tiled = len(job.spatial) - len(job.ts)
    for b in blocks:
        for key in block_tiles(job, b):
            uses[key] = uses.get(key, 0) + 1
            if uses[key] > 1:
                span = [(max(0, g.start - c), min(t, g.stop - c)) for c, t, g in zip(key[1:], job.ts, b.region[tiled:])]
                parts[key] = [(min(a, c), max(e, f)) for (a, e), (c, f) in zip(parts.get(key, span), span)]
    shared = {k: n for k, n in uses.items() if n > 1}
    return TileCache(shared, {k: tuple(slice(a, b) for a, b in parts[k]) for k in shared})
