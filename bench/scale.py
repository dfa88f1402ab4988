"""Memory and speed of blockwise segmentation against image size, and 1 vs 2 dask workers.

For each size a synthetic uint8 zarr image is written to a temporary folder; a fresh Python process
per size segments it from zarr to zarr (``segment_blocks``) with a small randomly initialised UNet and
reports its peak resident memory (``ru_maxrss``) and time, then times the bare network's forward pass
over the same number of pixels (non-overlapping tiles) in the same process, before and after the
blockwise run (their mean; "drift" is after / before, how much the machine's load moved). Two bare
passes: with the tiles and batch size asked (``--tile``, ``--batch``: "ratio"), and with those the
engine plans for this device (``plan_tiles``: on the CPU the tile asked, one per batch; "ratio
planned", which leaves the overlap's pixels and the blockwise work as the only difference). Both run
in the engine's arithmetic (bfloat16 autocast on CPUs with AMX, :func:`~napari_segsuite.layout.autocast_dtype`)
and in its layout (channels-last); "fp32 bare" is the tiles asked in float32, for scale.
Goals (issue 15): peak memory at the largest size <= 1.3x that at the smallest; throughput >= 0.9x the
bare forward pass. Then one size runs on a local dask cluster of 1 and of 2 workers: time and whether
the outputs are identical.

    OMP_NUM_THREADS=1 python bench/scale.py --sizes 2048,4096,8192,16384
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_image(path: Path, size: int, chunk: int = 1024) -> None:
    import zarr

    arr = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype=np.uint8, fill_value=0)
    yy, xx = np.mgrid[:chunk, :chunk]
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            rng = np.random.default_rng(y * 7919 + x)
            tile = rng.integers(0, 40, (chunk, chunk), dtype=np.uint8)
            for cy, cx in rng.integers(0, chunk, (40, 2)):
                tile[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 200
            arr[y : y + chunk, x : x + chunk] = tile[: size - y, : size - x]


def model(args: argparse.Namespace):
    import torch

    from napari_segsuite.model_files import new_model

    torch.manual_seed(0)
    return new_model("unet", label_values=[0, 1], depth=2, base_filters=args.filters)


def overlap(args: argparse.Namespace) -> dict:
    return {} if args.overlap is None else {"overlap": args.overlap}


def child(args: argparse.Namespace) -> None:
    """One size in this process: blockwise zarr -> zarr, then the bare forward pass."""
    import torch
    import zarr

    from napari_segsuite.blockwise import make_job, output_roles, segment_blocks
    from napari_segsuite.layout import autocast_dtype
    from napari_segsuite.lazy_io import open_lazy
    from napari_segsuite.progress import drive

    torch.set_num_threads(1)
    m = model(args)
    img = open_lazy(args.image).data
    out = zarr.create_array(args.out, shape=img.shape, chunks=(1024, 1024), dtype=output_roles(m, img)["classes"])
    settings = {"tile": args.tile, "batch_size": args.batch, "device": "cpu", **overlap(args)}
    job = make_job(m, img, **settings)
    m.module.eval()

    low = autocast_dtype(torch.device("cpu"))  # the engine's arithmetic (bfloat16 on CPUs with AMX)

    def bare(ts: tuple[int, ...], bs: int, dtype: torch.dtype | None = low) -> float:
        """The bare network over the image's pixels in non-overlapping tiles ``ts``, ``bs`` at a time, in
        the engine's precision (``dtype``; ``None``: float32)."""
        x = torch.randn(bs, 1, *ts)
        n_batches = int(np.ceil(img.shape[0] * img.shape[1] / math.prod(ts) / bs))
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            for _ in range(n_batches):
                m.module(x).float().softmax(1)
        return time.perf_counter() - t0

    # timed before and after the blockwise run and averaged, so a machine whose load drifts weighs on both alike
    asked, planned = ((args.tile, args.tile), args.batch), (job.ts, job.batch_size)
    before = [bare(*asked), bare(*planned)]
    t0 = time.perf_counter()
    drive(segment_blocks(m, img, {"classes": out}, block=args.block, **settings))
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = [bare(*asked), bare(*planned)]
    fp32 = bare(*asked, dtype=None) if low is not None else (before[0] + after[0]) / 2
    print(
        json.dumps({
            "seconds": seconds, "peak_mb": peak_mb, "bare_seconds": (before[0] + after[0]) / 2,
            "planned_seconds": (before[1] + after[1]) / 2, "bare_spread": after[0] / before[0],
            "planned": f"{job.ts[0]}x{job.batch_size}", "fp32_seconds": fp32, "precision": str(low or "float32"),
        })
    )  # fmt: skip


def workers(args: argparse.Namespace) -> None:
    """One size on a local dask cluster of 1 and of 2 workers (threads of this process)."""
    import torch
    import zarr
    from distributed import Client, LocalCluster

    from napari_segsuite.blockwise import output_roles, segment_blocks
    from napari_segsuite.lazy_io import Source
    from napari_segsuite.model_files import save_model
    from napari_segsuite.progress import drive

    torch.set_num_threads(1)
    m = model(args)
    save_model(m, Path(args.out) / "model")
    src = Source(path=args.image)
    result = {}
    for n in (1, 2):
        out = zarr.create_array(
            f"{args.out}/w{n}.zarr", shape=src.shape, chunks=(1024, 1024), dtype=output_roles(m, src)["classes"]
        )
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            t0 = time.perf_counter()
            work = segment_blocks(
                m, src, {"classes": out}, block=args.block, tile=args.tile, device="cpu", client=client,
                model_path=str(Path(args.out) / "model"), **overlap(args),
            )  # fmt: skip
            drive(work)
            result[f"seconds_{n}"] = time.perf_counter() - t0
    a, b = zarr.open_array(f"{args.out}/w1.zarr")[:], zarr.open_array(f"{args.out}/w2.zarr")[:]
    result["identical"] = bool((a == b).all())
    print(json.dumps(result))


def run(cmd: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2048,4096,8192,16384", help="image edges, comma separated")
    p.add_argument("--block", type=int, default=2048, help="block edge (default 2048)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="tiles per batch asked (default 4, the engine's)")
    p.add_argument(
        "--overlap", type=float, default=None, help="tile overlap, pixels or a share below 1 (default: the library's)"
    )
    p.add_argument("--filters", type=int, default=8, help="UNet base filters (default 8)")
    p.add_argument("--workers-size", type=int, default=4096, help="image edge for the 1 vs 2 workers run (0: skip)")
    p.add_argument("--child", choices=["size", "workers"], help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "size":
        return child(args)
    if args.child == "workers":
        return workers(args)
    common = ["--block", str(args.block), "--tile", str(args.tile), "--batch", str(args.batch)]
    common += ["--filters", str(args.filters)]
    if args.overlap is not None:
        common += ["--overlap", str(args.overlap)]
    sizes = [int(s) for s in args.sizes.split(",")]
    first_peak = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'size':>7} {'peak MB':>8} {'x smallest':>10} {'s':>7} {'Mpx/s':>7} {'bare Mpx/s':>10} {'ratio':>6} "
            f"{'drift':>6} {'planned':>8} {'bare Mpx/s':>10} {'ratio planned':>13} {'fp32 bare':>9} {'ratio fp32':>10}",
            flush=True,
        )
        for size in sizes:  # a row as each size is done: the largest can take long
            image = Path(tmp) / f"img{size}.zarr"
            write_image(image, size)
            r = run(["--child", "size", "--image", str(image), "--out", f"{tmp}/out{size}.zarr", *common])
            first_peak = first_peak or r["peak_mb"]
            mpx = size * size / 1e6
            print(
                f"{size:>7} {r['peak_mb']:>8.0f} {r['peak_mb'] / first_peak:>10.2f} {r['seconds']:>7.1f} "
                f"{mpx / r['seconds']:>7.2f} {mpx / r['bare_seconds']:>10.2f} {r['bare_seconds'] / r['seconds']:>6.2f} "
                f"{r['bare_spread']:>6.2f} {r['planned']:>8} {mpx / r['planned_seconds']:>10.2f} "
                f"{r['planned_seconds'] / r['seconds']:>13.2f} {mpx / r['fp32_seconds']:>9.2f} "
                f"{r['fp32_seconds'] / r['seconds']:>10.2f}",
                flush=True,
            )
        if args.workers_size:
            image = Path(tmp) / f"img{args.workers_size}.zarr"
            if not image.exists():
                write_image(image, args.workers_size)
            (Path(tmp) / "w").mkdir()
            r = run(["--child", "workers", "--image", str(image), "--out", f"{tmp}/w", *common])
            print(
                f"dask workers at {args.workers_size}^2: 1 worker {r['seconds_1']:.1f} s, 2 workers "
                f"{r['seconds_2']:.1f} s, identical output: {r['identical']}"
            )


if __name__ == "__main__":
    main()
