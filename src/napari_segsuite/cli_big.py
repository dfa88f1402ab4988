"""``segsuite segment`` for big images: zarr, OME-Zarr and large TIFF in, zarr out, block by block,
here or on a dask cluster (``--workers N``, ``--scheduler ADDRESS``), with ``--resume``.

Where the labels go:

- ``--output`` names the input OME-Zarr itself (or its ``labels`` group): into
  ``<input>/labels/<name>`` as the NGFF spec lays it out (``multiscales`` with one level, the image's
  axes and scale, ``image-label`` pointing back at the image), ``<name>`` from ``--label-name`` (default
  the model's name); an object layer beside classes (panoptic) goes to ``labels/<name>-objects``.
- ``--output Y.zarr``: a zarr array at ``Y.zarr`` (objects of a panoptic model: ``Y-objects.zarr``),
  its attributes holding the model and voxel size.
- ``--output FOLDER``: ``FOLDER/<input name>.zarr``.

Nothing that exists is replaced without ``--overwrite``; ``--resume`` continues a run that stopped:
class labels skip the blocks already written (recorded in the output's attributes), object ids run
again (they are stitched across all blocks).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .lazy_io import BIG_TIFF_VALUES, is_zarr_path, require, tiff_values

if TYPE_CHECKING:
    from .lazy_io import LazyImage

log = logging.getLogger(__name__)
CHUNK = 1024


def add_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--block-size",
        type=int,
        default=2048,
        metavar="PX",
        help="zarr and big inputs: block edge in pixels (memory grows with it, not with the image; default 2048)",
    )
    s.add_argument("--workers", type=int, default=0, metavar="N", help="start a local dask cluster of N workers")
    s.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="run on an existing dask cluster (tcp://host:8786)"
    )
    s.add_argument(
        "--resume", action="store_true", help="skip finished outputs (folders) and finished blocks (zarr class labels)"
    )
    s.add_argument("--label-name", default=None, help="OME-Zarr input: the name under labels/ (default: the model's)")


def wants_blocks(args: argparse.Namespace) -> bool:
    """Whether ``segment`` takes the blockwise path: a zarr input or output, or a TIFF too big to read whole."""
    inp = Path(args.input)
    if is_zarr_path(inp) or str(args.output).rstrip("/").lower().endswith(".zarr"):
        return True
    if inp.is_file() and inp.suffix.lower() in (".tif", ".tiff"):
        try:
            return tiff_values(inp) > BIG_TIFF_VALUES
        except Exception:  # not readable as TIFF: the normal path says why
            return False
    return False


@contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A ``dask.distributed`` client for ``--scheduler`` or ``--workers``, or ``None`` (work here)."""
    if not workers and not scheduler:
        yield None
        return
    require("distributed")
    from distributed import Client, LocalCluster

    if not log.isEnabledFor(logging.INFO):  # the cluster's own chatter only with --verbose
        logging.getLogger("distributed").setLevel(logging.WARNING)

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # threads in this process: torch releases the GIL, the model is loaded once, nothing is pickled
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _ngff(root: Path) -> tuple[dict[str, Any], str, Literal[2, 3]]:
    from .lazy_io import _multiscales

    found = _multiscales(root)
    if found is None:
        raise ValueError(f"{root.name!r} is not an OME-Zarr image.")
    fmt: Literal[2, 3] = 3 if (root / "zarr.json").is_file() else 2
    return found[0], found[1], fmt


def _wrap(attrs: dict[str, Any], version: str) -> dict[str, Any]:
    return {"ome": {"version": version, **attrs}} if not version.startswith(("0.1", "0.2", "0.3", "0.4")) else attrs


def _ome_label_array(img: LazyImage, name: str, dtype: np.dtype, overwrite: bool, resume: bool) -> Any:
    """``labels/<name>`` in the image's OME-Zarr: the NGFF metadata and an empty level 0 (or the existing one)."""
    import zarr

    assert img.ome_root is not None
    ms, version, fmt = _ngff(img.ome_root)
    level0 = zarr.open_array(str(img.ome_root / ms["datasets"][0]["path"]), mode="r")
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"[5 - level0.ndim :]]
    names = [str(a["name"] if isinstance(a, dict) else a).lower() for a in axes]
    shape = tuple(1 if n in ("t", "c") else s for n, s in zip(names, level0.shape))
    scale = [1.0] * level0.ndim
    for transforms in (ms["datasets"][0].get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    labels = zarr.open_group(str(img.ome_root / "labels"), mode="a", zarr_format=fmt)
    node = img.ome_root / "labels" / name
    existing = node.exists()
    if existing and not (overwrite or resume):
        raise ValueError(
            f"{str(node)!r} holds labels already; add --overwrite to replace them, --resume to continue, or "
            "--label-name to write another (nothing was written)."
        )
    if existing and resume:
        arr = zarr.open_array(str(node / "0"), mode="r+")
        if arr.shape == shape:
            return _Spatial(arr, names)
    group = zarr.open_group(str(node), mode="w", zarr_format=fmt)
    meta = {
        "multiscales": [
            {
                **({"version": version} if version.startswith("0.4") else {}),
                "name": name,
                "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ],
        "image-label": {
            **({"version": version} if version.startswith("0.4") else {}),
            "source": {"image": "../../"},
        },
    }
    group.attrs.update(_wrap(meta, version))
    chunks = tuple(1 if n in ("t", "c") else min(CHUNK, s) for n, s in zip(names, shape))
    extra: dict[str, Any] = {"dimension_names": names}
    if fmt == 2:
        extra = {"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    arr = zarr.create_array(group.store, name="0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **extra)
    old: dict[str, Any] = dict(labels.attrs)
    listed = old.get("ome", {}).get("labels") if fmt == 3 else old.get("labels")
    listed = [n for n in (listed or []) if n != name] + [name]
    labels.attrs.update(_wrap({"labels": listed}, version))
    return _Spatial(arr, names)


class _Spatial:
    """A label array with the image's ``t``/``c`` axes of length 1, indexed by its spatial axes only."""

    def __init__(self, arr: Any, names: list[str]) -> None:
        self.arr, self.fixed = arr, [n in ("t", "c") for n in names]

    def _box(self, box: tuple[slice, ...]) -> tuple[Any, ...]:
        it = iter(box)
        return tuple(0 if f else next(it) for f in self.fixed)

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.arr[self._box(box)])

    def __setitem__(self, box: tuple[slice, ...], value: np.ndarray) -> None:
        self.arr[self._box(box)] = value

    @property
    def attrs(self) -> Any:
        return self.arr.attrs


def _zarr_array(path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool, resume: bool) -> Any:
    import zarr

    if path.exists() and not is_zarr_path(path):
        raise ValueError(
            f"{str(path)!r} exists and is not a zarr array; choose another --output (nothing was written)."
        )
    if path.exists() and not (overwrite or resume):
        raise ValueError(
            f"{str(path)!r} exists already; add --overwrite to replace it, --resume to continue it, or choose "
            "another --output (nothing was written)."
        )
    if path.exists() and resume:
        arr = zarr.open_array(str(path), mode="r+")
        if arr.shape == shape:
            return arr
    chunks = tuple(min(CHUNK, s) for s in shape)
    return zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True)


def plan_outputs(args: argparse.Namespace, model: Any, img: LazyImage, roles: dict[str, np.dtype]) -> dict[str, Any]:
    """The output array of each role, created (empty) after every check passed."""
    from .checks import _no_file_above, _same, check_output_collisions

    inp, out = Path(args.input), Path(args.output)
    into_ome = img.ome_root is not None and (_same(out, inp) or _same(out, inp / "labels"))
    name = args.label_name or model.name
    if into_ome:
        names = {r: name if r == next(iter(roles)) else f"{name}-objects" for r in roles}
        return {r: _ome_label_array(img, names[r], d, args.overwrite, args.resume) for r, d in roles.items()}
    if not out.name.lower().endswith(".zarr"):
        out = out / (inp.name if inp.name.lower().endswith(".zarr") else inp.stem.split(".")[0] + ".zarr")
    paths = {r: out if r == next(iter(roles)) else out.with_name(out.name[:-5] + "-objects.zarr") for r in roles}
    check_output_collisions({inp: list(paths.values())})
    for p in paths.values():
        if _same(p, inp):
            raise ValueError(
                f"Writing {str(p)!r} would replace the input {str(inp)!r}; choose another --output, or the "
                "OME-Zarr itself to write into its labels/ group (nothing was written)."
            )
        _no_file_above(p, "--output")
    spatial = img.data.shape[:-1] if _rgb(img.data) else img.data.shape
    arrays = {
        r: _zarr_array(p, tuple(spatial), d, args.overwrite, args.resume)
        for (r, d), p in zip(roles.items(), paths.values())
    }
    for a in arrays.values():
        meta = {"model": model.name, "voxel_size": img.voxel_size, "unit": img.unit}
        a.attrs.update({"segsuite": {**dict(a.attrs).get("segsuite", {}), **meta}})
    return arrays


def _rgb(data: Any) -> bool:
    from .preprocess import infer_axes

    return infer_axes(tuple(data.shape)).rgb


def segment_big(args: argparse.Namespace, model: Any, model_path: Path) -> int:
    """``segsuite segment`` on one big input (see the module text)."""
    require("zarr", "dask")
    from .blockwise import output_roles, segment_blocks
    from .checks import check_image_array
    from .cli_support import run_with_bar
    from .lazy_io import Source, open_lazy

    inp = Path(args.input)
    img = open_lazy(inp)
    check_image_array(img.data, f"Image {inp.name!r}", big=True)
    roles = output_roles(model, img.data)
    outputs = plan_outputs(args, model, img, roles)
    main = next(iter(outputs.values()))
    signature = {"shape": list(img.data.shape), "block": args.block_size, "tile": args.tile, "model": str(model_path)}
    record = dict(main.attrs).get("segsuite", {})
    skip: set[tuple[int, ...]] = set()
    if args.resume and record.get("plan") == signature and "ids" not in roles:
        skip = {tuple(i) for i in record.get("done_blocks", [])}
    elif args.resume and "ids" in roles:
        log.warning("Object ids are stitched across all blocks: --resume runs every block again.")
    done = [list(i) for i in skip]

    def on_block(index: tuple[int, ...]) -> None:
        done.append(list(index))
        main.attrs.update(
            {"segsuite": {**dict(main.attrs).get("segsuite", {}), "plan": signature, "done_blocks": done}}
        )

    source = Source(path=str(inp))
    with dask_client(args.workers, args.scheduler) as client:
        work = segment_blocks(
            model,
            source if client is not None else img.data,
            outputs,
            block=args.block_size,
            client=client,
            model_path=str(model_path),
            skip=skip,
            on_block=on_block,
            tile=args.tile,
            device=args.device,
            tta=getattr(args, "tta", None),
        )
        result = run_with_bar(work, inp.name)
    where = {r: str(getattr(a, "arr", a).store_path).removeprefix("file://") for r, a in outputs.items()}
    n = f", {result['objects']} objects" if "objects" in result else ""
    print(
        f"{', '.join(where.values())} ({len(skip)} blocks already done{n})"
        if skip
        else f"{', '.join(where.values())}{n}"
    )
    return 0


def _file_task(
    model_path: str, image: Path, outs: tuple[Path, Path | None, Path | None], tile: int, device: str
) -> list[str]:
    """One file of a folder on a dask worker: read, segment, write (the model loaded once per worker)."""
    from .blockwise import worker_model
    from .inference import segment
    from .io import read_image_info, write_labels, write_objects_table
    from .progress import drive

    model = worker_model(model_path, device)
    info = read_image_info(image)
    seg = drive(segment(model, info.data, tile=tile, device=device))
    labels_path, ids_path, table_path = outs
    written = [str(write_labels(labels_path, seg.labels, like=info))]
    if ids_path is not None and seg.semantic is not None and seg.instances is not None:
        written.append(str(write_labels(ids_path, seg.instances, like=info)))
    if table_path is not None and seg.features is not None:
        written.append(str(write_objects_table(table_path, seg.features)))
    return written


def segment_files(args: argparse.Namespace, model: Any, model_path: Path, files: list[Path], planned: dict) -> int:
    """A folder of images on a dask cluster: one task per file, each output written by its worker."""
    from .cli_support import read_for_segment

    read_for_segment(files, model)  # every input checked before the first output
    with dask_client(args.workers, args.scheduler) as client:
        from distributed import as_completed
        from tqdm import tqdm

        futures = [
            client.submit(_file_task, str(model_path), f, planned[f], args.tile, args.device, pure=False) for f in files
        ]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="images", disable=None):
            for line in fut.result():
                print(line)
    return 0
