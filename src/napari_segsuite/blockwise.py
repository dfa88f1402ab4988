"""Segmenting images and volumes too large for memory, block by block, locally or on a dask cluster.

:func:`segment_blocks` is the one function: it takes a numpy, dask or zarr array and writes the labels
into arrays it is given (zarr on disk, or numpy for small inputs), one block at a time.

**Same bits as the whole-image path** (map models): the sliding-window tile grid is the one
:func:`~.inference.segment` lays over the whole image (:func:`~.tiling.grid_starts`); block borders
sit at tile centres; a block reads every tile of that grid that touches its region and blends them in
the same order, and the network always runs on full batches (:func:`~.tiling.run_tiles`), so each
pixel's maps, and so its classes, come out bit for bit as in memory. Normalisation uses the whole
image's percentiles from the same strided sample (:func:`norm_stats`). A tile cut by a block border
is blended by both blocks but computed once: here, its maps wait in a :class:`~.tiling.TileCache` for
the second block (on a dask cluster each block computes it).

**Objects**: each block post-processes its core plus a halo (:data:`HALO` pixels) and writes its core;
:class:`~.stitch.Stitcher` makes the ids global and joins objects cut by block borders. A 2D model on a
volume runs slice by slice and links its slices (``link_slices``) inside each block's region. Object
models (Mask R-CNN, ...) tile each region their own way.

**Where it runs**: ``client=None``: here, block after block; a ``dask.distributed`` client: each block
is a task (at most two per worker in flight), the model is loaded once per worker from ``model_path``,
and this process writes the results as they come (one writer, so blocks never race on a chunk).
Results do not depend on the number of workers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch

from .blockplan import BLOCK, HALO, Block, Job, block_tiles, make_job, plan_blocks, tile_cache
from .geometry import whole_input_only
from .heap import trim_heap
from .inference import mirrors, pick_device, transposes
from .lazy_io import Source, read_block
from .model_files import SegModel, load_model
from .models.base import ObjectModel
from .preprocess import Axes, LabelMap, apply_normalization, infer_axes, to_slices
from .progress import Progress, Work, drive
from .stitch import Box, Stitcher, shift
from .tasks import get_task, instance
from .tiling import TileCache, blend_tiles, pad_mode, pad_to, predict_objects

__all__ = [
    "BIG_LAYER_VALUES", "BLOCK", "HALO", "Block", "BlockResult", "Job", "block_input", "block_tiles", "make_job",
    "output_roles", "plan_blocks", "run_block", "segment_blocks", "segment_to_zarr", "tile_cache", "worker_model",
]  # fmt: skip


T = TypeVar("T")


@dataclass
class BlockResult:
    index: tuple[int, ...]
    classes: np.ndarray | None = None  # the user's label values over the core
    ids: np.ndarray | None = None  # object ids 1..n over the region


def block_input(job: Job, block: Block, data: Any, in_channels: int) -> np.ndarray:
    """What the network sees of one block: read, as ``(S, C, *yx)`` slices, normalised (thread-safe: the
    local loop reads the next block this way while the network runs on the current one)."""
    read = block.read + ((slice(None),) if job.rgb else ())
    x = to_slices(read_block(data, read), Axes(volume=job.volume, rgb=job.rgb), in_channels)
    return x if job.stats is None else apply_normalization(x, job.stats)  # the raw copy freed


def run_block(model: SegModel, job: Job, block: Block, data: Any, cache: TileCache | None = None) -> Work[BlockResult]:
    """Segment one block here: read it, run the tiles (those in ``cache`` only once), post-process its region."""
    x = block_input(job, block, data, model.card.in_channels)
    done = yield from start_block(model, job, block, x, cache, _Now())
    return done.result()


class _Now(Executor):
    """An executor that runs each task at once, in the caller's thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        f: Future[T] = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:
            f.set_exception(e)
        return f


def start_block(
    model: SegModel, job: Job, block: Block, x: np.ndarray, cache: TileCache | None, post: Executor
) -> Work[Future[BlockResult]]:
    """Run the network over one block's input ``x`` (:func:`block_input`) here, and hand each part's
    post-processing and the block's result to ``post`` (one worker, first in first out): the local loop
    post-processes a block in a thread while the network runs on the next. At most one part's maps
    wait for ``post`` at a time (a 2D model over a volume: one slice's)."""
    card, task, dev = model.card, get_task(model.card.kind), pick_device(job.device)
    tiled = len(job.spatial) - len(job.ts)
    inner = tuple(shift(block.region, block.read))
    parts = [x[z] for z in range(x.shape[0])] if job.per_slice or not job.volume else [np.moveaxis(x, 0, 1)]
    segs: list[Future[tuple[Any, Any]]] = []
    for i, part in enumerate(parts):
        if job.per_slice and not inner[0].start <= i < inner[0].stop:
            continue
        if job.objects:
            ids, _ = yield from predict_objects(
                cast(ObjectModel, model.module), part, tile=job.tile, overlap=job.overlap, batch_size=job.batch_size,
                divisible_by=card.divisible_by, device=dev,
            )  # fmt: skip
            segs.append(_Now().submit(lambda ids=ids: (None, ids)))
            continue
        z = block.read[0].start + i if job.per_slice else 0
        maps = yield from _maps(model, job, part, block.read[tiled:], block.region[tiled:], dev, (cache, z))
        if segs:
            segs[-1].result()  # memory: the last part's maps post-processed before this part's wait
        segs.append(post.submit(_post, task, card, maps))
        del maps
        yield Progress(i + 1, len(parts), f"block {block.index}")
    return post.submit(_assemble, job, card, block, segs)


def _post(task: Any, card: Any, maps: np.ndarray) -> tuple[Any, Any]:
    seg = task.postprocess(maps, card)
    return seg.semantic, seg.instances


def _assemble(job: Job, card: Any, block: Block, parts: list[Future[tuple[Any, Any]]]) -> BlockResult:
    """The block's result over its core (classes) or region (ids), from its parts' post-processing."""
    segs = [f.result() for f in parts]
    out = BlockResult(block.index)
    core = shift(block.core, block.region)
    if job.wants_classes:
        sem = np.stack([s for s, _ in segs]) if job.per_slice else segs[0][0]
        out.classes = LabelMap(card.label_values).to_values(sem[core])
    if job.wants_ids:
        ids = np.stack([i for _, i in segs]) if job.per_slice else segs[0][1]
        out.ids = instance.link_slices(ids) if job.per_slice else ids.astype(np.int32)
    return out


def _maps(
    model: SegModel, job: Job, part: np.ndarray, read: Box, region: Box, dev: torch.device, shared: tuple[Any, int]
) -> Work[np.ndarray]:
    """Blended maps over ``region`` (in a part read over ``read``), from the whole image's tiles that
    touch it (same order, same bits); ``shared``: a :class:`TileCache` (or ``None``) and the part's slice."""
    card, task = model.card, get_task(model.card.kind)
    spatial = job.spatial[-len(job.ts) :]
    starts, size = [], []
    for ax, (r, g) in enumerate(zip(read, region)):
        st = [s - r.start for s in job.starts[ax] if s < g.stop and s + job.ts[ax] > g.start]
        starts.append(st)
        size.append(max(r.stop - r.start, st[-1] + job.ts[ax]))  # beyond the image only where it is padded
    x = pad_to(part, tuple(size), pad_mode(spatial, job.padded))
    n_tiles = math.prod(len(s) for s in job.starts)
    cache, z = shared
    origin = [r.start for r in read]

    def key(corner: tuple[int, ...]) -> Hashable:
        return (z, *(c + o for c, o in zip(corner, origin)))

    bs = max(1, job.batch_size // 2) if len(job.ts) == 3 else job.batch_size
    maps = yield from blend_tiles(
        model.module, x, job.ts, starts, job.overlap, num_classes=task.output_channels(card), batch_size=bs,
        device=dev, amp=job.amp, activate=lambda out: task.activate(out, card), full_batches=n_tiles > 1,
        flips=mirrors(card) if job.tta else ((),), unmirror=lambda maps, dims: task.unmirror(maps, dims, card),
        transposed=bool(job.tta) and transposes(card), untranspose=lambda maps: task.untranspose(maps, card),
        shared=None if cache is None else (cache, key), keep=tuple(shift(region, read)),
    )  # fmt: skip
    return maps.numpy()


_MODELS: dict[tuple[str, str], SegModel] = {}


def worker_model(model_path: str, device: str) -> SegModel:
    """The model at ``model_path`` on ``device``, loaded once per process (a dask worker's) and kept."""
    key = (model_path, device)
    if key not in _MODELS:
        m = load_model(model_path)
        m.module.to(pick_device(device)).eval()
        _MODELS[key] = m
    return _MODELS[key]


def _block_task(model_path: str, job: Job, block: Block, data: Any) -> BlockResult:
    """One block on a dask worker."""
    return drive(run_block(worker_model(model_path, job.device), job, block, data))


def output_roles(model: SegModel, data: Any, rgb: bool | None = None) -> dict[str, np.dtype]:
    """The arrays :func:`segment_blocks` writes: ``"classes"`` (label values) and/or ``"ids"`` (int32)."""
    card = model.card
    task = get_task(card.kind)
    objects = isinstance(model.module, ObjectModel)
    roles: dict[str, np.dtype] = {}
    if not objects and task.gives_classes:
        roles["classes"] = LabelMap(card.label_values).to_values(np.zeros(1, np.int64)).dtype
    if objects or task.gives_ids:
        roles["ids"] = np.dtype(np.int32)
    return roles


def segment_blocks(
    model: SegModel,
    data: Any,
    outputs: dict[str, Any],
    *,
    block: int | tuple[int, ...] = BLOCK,
    halo: int | tuple[int, ...] = HALO,
    client: Any = None,
    model_path: str | None = None,
    skip: set[tuple[int, ...]] | None = None,
    on_block: Any = None,
    **settings: Any,
) -> Work[dict[str, Any]]:
    """Segment ``data`` (numpy, dask or zarr; axes as :func:`~.inference.segment` takes them) block by
    block into ``outputs`` (``{role: array}`` for the roles of :func:`output_roles`, zarr or numpy).

    Args:
        block: Block edge per spatial axis (an int for all; for a 2D model over a volume, the Z edge too).
        halo: Pixels around each core where objects are formed and matched (object models: use more
            than the largest object).
        client: A ``dask.distributed.Client``: run blocks as tasks there (needs ``model_path``).
        skip: Blocks already written (resume; semantic outputs only).
        on_block: Called with each block index once its core is written.
        settings: ``rgb``, ``tile``, ``tile_z``, ``overlap``, ``batch_size``, ``device``, ``amp``.

    Yields:
        :class:`Progress` per block (and per batch of tiles when run here).

    Returns:
        ``outputs``, and ``"objects"``: the number of objects where there are ids.
    """
    if why := whole_input_only(model.card):
        raise ValueError(f"Model {model.name!r} {why}; segment it whole, not block by block.")
    job = make_job(model, data, **settings)
    if job.volume and job.per_slice and isinstance(block, int):
        block = (max(1, min(block, 64)), block, block)  # slices are cheap to read: thinner blocks
    blocks = plan_blocks(job, block, halo)
    if skip and job.wants_ids:
        raise ValueError("Resuming applies to class labels only; object ids are stitched across all blocks.")
    todo = [b for b in blocks if not skip or b.index not in skip]
    stitch = Stitcher(outputs["ids"], {b.index: b.core for b in blocks}) if job.wants_ids else None

    def take(b: Block, r: BlockResult) -> None:
        if r.classes is not None:
            outputs["classes"][b.core] = r.classes
        if stitch is not None and r.ids is not None:
            stitch.add(b.index, b.region, r.ids)
        if on_block is not None:
            on_block(b.index)

    total = len(todo)
    if client is None:
        model.module.to(pick_device(job.device)).eval()
        cache = tile_cache(job, todo)
        # Two threads beside the network: one reads and normalises the next block (zarr's decompression,
        # file reads and numpy's casts release the GIL), one post-processes and assembles the last block;
        # the results are taken here, in order. 8192^2 zarr -> zarr, one torch thread: see bench/scale.py.
        n_in = model.card.in_channels
        with (
            ThreadPoolExecutor(1, thread_name_prefix="segsuite-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="segsuite-post") as post,
        ):
            ahead = [reader.submit(block_input, job, b, data, n_in) for b in todo[:1]]
            finishing: list[tuple[Block, Future[BlockResult]]] = []
            for k, b in enumerate(todo):
                x = ahead.pop().result()
                ahead += [reader.submit(block_input, job, n, data, n_in) for n in todo[k + 1 : k + 2]]
                done = yield from _noted(start_block(model, job, b, x, cache, post), k, total)
                del x
                for fb, f in finishing:  # the block before, post-processed while the network ran on this one
                    take(fb, f.result())
                finishing = [(b, done)]
                trim_heap()  # the kept tiles' maps scatter the heap's free pages: give them back
                yield Progress(k + 1, total, f"block {k + 1}/{total}")
            for fb, f in finishing:
                take(fb, f.result())
    else:
        yield from _on_cluster(client, model_path, job, todo, data, take)
    result: dict[str, Any] = dict(outputs)
    if stitch is not None:
        result["objects"] = stitch.finish([b.index for b in blocks])
    return result


def _noted(work: Work[T], k: int, total: int) -> Work[T]:
    """``work``'s progress as the progress of block ``k`` of ``total``."""
    while True:
        try:
            p = next(work)
        except StopIteration as stop:
            return cast(T, stop.value)
        yield Progress(k, total, f"block {k + 1}/{total} · {p.note}")


def _on_cluster(client: Any, model_path: str | None, job: Job, todo: list[Block], data: Any, take: Any) -> Work[None]:
    from distributed import as_completed

    if model_path is None:
        raise ValueError("Running on a dask cluster needs the model's path (model_path), to load it on each worker.")
    by_index = {b.index: b for b in todo}
    window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    src = data if isinstance(data, Source) else Source(data)
    [data_f] = client.scatter([src], broadcast=True)
    queue = iter(todo)
    running = as_completed(
        [client.submit(_block_task, model_path, job, b, data_f, pure=False) for b in itertools.islice(queue, window)]
    )
    for done, fut in enumerate(running, 1):
        r = fut.result()
        take(by_index[r.index], r)
        fut.release()
        nxt = next(queue, None)
        if nxt is not None:
            running.add(client.submit(_block_task, model_path, job, nxt, data_f, pure=False))
        yield Progress(done, len(todo), f"block {done}/{len(todo)}")


#: A lazy (dask or zarr) napari layer with more values than this is segmented block by block into zarr.
BIG_LAYER_VALUES = 1 << 26


def segment_to_zarr(model: SegModel, data: Any, folder: str | None = None, **settings: Any) -> Work[Any]:
    """Segment a lazy array block by block into zarr arrays in ``folder`` (a new temporary folder by
    default): what the Segment widget does with a big dask- or zarr-backed layer.

    Returns:
        A :class:`~.tasks.Segmentation` whose ``semantic`` / ``instances`` are the on-disk zarr arrays.
    """
    import tempfile

    import zarr

    from .tasks import Segmentation

    where = folder or tempfile.mkdtemp(prefix="segsuite-")
    axes = infer_axes(tuple(data.shape), settings.get("rgb"))
    spatial = axes.spatial_shape(tuple(data.shape))
    chunks = tuple(min(1024, n) for n in spatial)
    outputs: dict[str, Any] = {
        role: zarr.create_array(f"{where}/{role}.zarr", shape=spatial, chunks=chunks, dtype=dtype, fill_value=0)
        for role, dtype in output_roles(model, data).items()
    }
    yield from segment_blocks(model, data, outputs, block=settings.pop("block", BLOCK), **settings)
    return Segmentation(semantic=outputs.get("classes"), instances=outputs.get("ids"))
