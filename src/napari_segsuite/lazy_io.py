"""Images too large for memory, opened lazily: zarr, OME-Zarr, large TIFF, dask or zarr arrays.

Everything here returns a dask array over the file's own chunks, so nothing is read until a block
of it is asked for (:mod:`.blockwise` reads one block plus its halo at a time). Plain numpy arrays are
never wrapped: they keep the in-memory path.

- **zarr**: an array (``X.zarr``), or a group whose first array is the image.
- **OME-Zarr** (NGFF 0.4 / 0.5): the full-resolution level of the first multiscale image; the
  voxel size and unit come from its axes and scale transformations; axes ``t`` and ``c`` of length 1
  are dropped, a channel axis of 3 or 4 becomes the trailing colour axis.
- **TIFF**: through tifffile's zarr store (``tifffile.imread(path, aszarr=True)``), level 0 of a
  pyramid; OME and ImageJ pixel sizes as :func:`~.io_formats.read_tiff` reads them.

zarr and dask are the ``big`` extra (``pip install 'napari-segsuite[big]'``); :func:`require` names
it when one is missing.
"""

from __future__ import annotations

import importlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import Axes, NormStats, check_normalization, infer_axes, sample_step, stats_from_samples, to_slices

Box = tuple[slice, ...]

ZARR_SUFFIXES = (".zarr", ".ome.zarr")
#: Values read at a time by :func:`norm_stats`.
BAND_VALUES = 1 << 24
#: A TIFF with more values than this is read lazily by ``segsuite segment`` (below: read whole, as before).
BIG_TIFF_VALUES = 1 << 27


def require(*modules: str) -> None:
    """Import ``modules`` or say which extra to install.

    Raises:
        ImportError: names the missing module and ``pip install 'napari-segsuite[big]'``.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(
                f"Big images need the optional package {name!r}; install it with: pip install 'napari-segsuite[big]'"
            ) from None


@dataclass
class LazyImage:
    """A lazily read image and what its file says about it.

    Attributes:
        data: A dask array, axes ``(Y, X)``, ``(Y, X, C)``, ``(Z, Y, X)`` or ``(Z, Y, X, C)``.
        voxel_size: Pixel or voxel size in the order of the spatial axes, or ``None``.
        unit: The unit of ``voxel_size`` (``"micrometer"``, ``"µm"``, ...), or ``None``.
        source: The path read.
        ome_root: For OME-Zarr, the image group (where ``labels/`` goes).
        ngff_axes: For OME-Zarr, the axes (NGFF dicts) of the spatial axes kept, in order.
        ngff_version: For OME-Zarr, the NGFF version (``"0.4"``, ``"0.5"``).
    """

    data: Any
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    source: str = ""
    ome_root: Path | None = None
    ngff_axes: list[dict[str, Any]] = field(default_factory=list)
    ngff_version: str | None = None


def is_lazy(data: Any) -> bool:
    """Whether ``data`` is an array that is not in memory (dask, zarr, or anything but numpy with a shape)."""
    return not isinstance(data, np.ndarray) and hasattr(data, "shape") and hasattr(data, "dtype")


def as_dask(data: Any) -> Any:
    """``data`` as a dask array over its own chunks (a dask array is returned as it is)."""
    require("dask")
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    chunks = getattr(data, "chunks", None)
    if chunks is None or not isinstance(chunks, tuple) or not all(isinstance(c, int) for c in chunks):
        chunks = "auto"
    return da.from_array(data, chunks=chunks, asarray=False, fancy=False)


def is_zarr_path(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".zarr" or (
        p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
    )


def is_ome_zarr(path: str | Path) -> bool:
    return is_zarr_path(path) and _multiscales(Path(path)) is not None


def _attrs(path: Path) -> dict[str, Any]:
    """A zarr node's attributes straight from its metadata file (v3 ``zarr.json`` or v2 ``.zattrs``)."""
    if (path / "zarr.json").is_file():
        return dict(json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {}))
    if (path / ".zattrs").is_file():
        return dict(json.loads((path / ".zattrs").read_text(encoding="utf-8")))
    return {}


def _multiscales(path: Path) -> tuple[dict[str, Any], str] | None:
    """The first multiscale entry of an OME-Zarr image group and its NGFF version, or ``None``."""
    attrs = _attrs(path)
    ome = attrs.get("ome", {})
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    version = ome.get("version", "0.5") if ms else None
    if not ms:
        ms = attrs.get("multiscales")
        version = (ms[0].get("version", "0.4") if ms else None) if isinstance(ms, list) else None
    if not ms or not isinstance(ms, list):
        return None
    return ms[0], str(version)


def open_lazy(path: str | Path) -> LazyImage:
    """Open a zarr, OME-Zarr or TIFF file lazily (see the module text).

    Raises:
        ImportError: zarr or dask is not installed (names the extra).
        ValueError: the file holds no array, or one of an unsupported layout (named).
    """
    require("zarr", "dask")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"No such file or folder: {str(p)!r}.")
    if is_zarr_path(p):
        found = _multiscales(p)
        return _open_ome(p, *found) if found else _open_zarr(p)
    return _open_tiff(p)


def _open_zarr(p: Path) -> LazyImage:
    import zarr

    node = zarr.open(str(p), mode="r")
    if isinstance(node, zarr.Group):
        arrays = sorted(node.arrays(), key=lambda kv: kv[0])
        if not arrays:
            raise ValueError(f"{p.name!r} is a zarr group holding no array; give the array's path (e.g. {p.name}/0).")
        node = arrays[0][1]
    return LazyImage(data=_squeeze(as_dask(node)), source=str(p))


def _open_ome(p: Path, ms: dict[str, Any], version: str) -> LazyImage:
    import zarr

    level = ms["datasets"][0]
    arr = zarr.open_array(str(p / level["path"]), mode="r")
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"[5 - arr.ndim :]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]  # NGFF 0.3 gave names only
    scale = [1.0] * arr.ndim
    for transforms in (level.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    data = as_dask(arr)
    names = [str(a["name"]).lower() for a in axes]
    keep = [i for i, (name, n) in enumerate(zip(names, arr.shape)) if not (name in ("t", "c") and n == 1)]
    index = tuple(slice(None) if i in keep else 0 for i in range(arr.ndim))
    data = data[index]
    kept = [names[i] for i in keep]
    if "t" in kept:
        raise ValueError(f"{p.name!r} has a time axis of {arr.shape[names.index('t')]} points; segment one time point.")
    if "c" in kept:
        n_c = arr.shape[names.index("c")]
        if n_c not in (3, 4):
            raise ValueError(f"{p.name!r} has {n_c} channels; the models take grey or colour (3 channels) images.")
        data = np.moveaxis(data, kept.index("c"), -1)
        kept.remove("c")
    spatial = [i for i in keep if names[i] not in ("t", "c")]
    vs = tuple(scale[i] for i in spatial)
    units = {axes[i].get("unit") for i in spatial} - {None}
    return LazyImage(
        data=data,
        voxel_size=vs if any(v != 1.0 for v in vs) else None,
        unit=units.pop() if len(units) == 1 else None,
        source=str(p),
        ome_root=p,
        ngff_axes=[axes[i] for i in spatial],
        ngff_version=version,
    )


def _open_tiff(p: Path) -> LazyImage:
    import tifffile
    import zarr

    from .io_formats import ImageReadError

    try:
        store = tifffile.imread(str(p), aszarr=True)
    except Exception as err:  # tifffile raises its own errors on a damaged file
        raise ImageReadError(f"Cannot read {p.name!r} as a TIFF file ({err}); it may be damaged.") from None
    node = zarr.open(store, mode="r")
    if isinstance(node, zarr.Group):  # a pyramid: level 0
        node = node[sorted(k for k, _ in node.arrays())[0]]
    voxel, unit = _tiff_sizes(p)
    return LazyImage(data=_squeeze(as_dask(node)), voxel_size=voxel, unit=unit, source=str(p))


def _squeeze(data: Any) -> Any:
    """Drop axes of length 1, keeping at least 2 (as :func:`~.io.read_image_info` does)."""
    while data.ndim > 2 and 1 in data.shape:
        data = data[tuple(0 if i == data.shape.index(1) else slice(None) for i in range(data.ndim))]
    return data


def _tiff_sizes(p: Path) -> tuple[tuple[float, ...] | None, str | None]:
    """A TIFF's pixel or voxel size and unit from its OME or ImageJ metadata (as :func:`~.io_formats.read_tiff`)."""
    import tifffile

    from .io_formats import _imagej_sizes, _ome_sizes

    with tifffile.TiffFile(p) as tf:
        series = tf.series[0]
        shape = dict(zip(series.axes.upper(), series.shape))
        try:
            if tf.is_ome and tf.ome_metadata:
                sizes, unit = _ome_sizes(tf.ome_metadata)
            elif tf.is_imagej:
                sizes, unit = _imagej_sizes(tf)
            else:
                return None, None
        except (ValueError, KeyError, TypeError):  # metadata is a help, not a must
            return None, None
    axes = "ZYX" if shape.get("Z", 1) > 1 and "Z" in sizes else "YX"
    if not all(a in sizes for a in axes):
        return None, None
    return tuple(float(sizes[a]) for a in axes), unit


def tiff_values(path: str | Path) -> int:
    """How many values a TIFF's first series holds (from its header; nothing else is read)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return int(np.prod(tf.series[0].shape, dtype=np.float64))


def norm_stats(data: Any, rgb: bool, in_channels: int, spec: dict[str, Any] | None) -> NormStats | None:
    """The whole image's normalisation (:func:`~.preprocess.normalization_stats`), read band by band:
    the same strided sample of the same values, so the same percentiles, without holding the image."""
    spec = check_normalization(spec)
    if spec is None:
        return None
    axes = infer_axes(tuple(data.shape), rgb)
    spatial = axes.spatial_shape(tuple(data.shape))
    vol = spatial if axes.volume else (1, *spatial)
    per_channel = math.prod(vol)
    step = sample_step(per_channel)
    rows = max(1, BAND_VALUES // vol[2])
    bands = [(z, y0) for z in range(vol[0]) for y0 in range(0, vol[1], rows)]

    def sample(band: tuple[int, int]) -> tuple[np.ndarray, bool, bool]:
        """The band's sampled values ``(C, n)`` and whether all / any of its values are finite. The
        sample is taken from the raw pixels and then converted: the same values as converting first
        (each pixel's conversion is its own), for a fraction of the work."""
        z, y0 = band
        box = (slice(y0, min(vol[1], y0 + rows)), slice(None))
        raw = read_block(data, ((slice(z, z + 1),) if axes.volume else ()) + box)
        every, some = True, True
        if raw.dtype.kind == "f":  # as the network would see them (float64 beyond float32 is infinite)
            fin = np.isfinite(to_slices(raw, axes, in_channels))
            every, some = bool(fin.all()), bool(fin.any())
        first = (z * vol[1] + y0) * vol[2]
        pixels = raw.reshape(-1, raw.shape[-1]) if axes.rgb else raw.reshape(-1)
        picked = pixels[(-first) % step :: step]
        values = to_slices(picked[None], Axes(volume=False, rgb=axes.rgb), in_channels)  # (1, C, 1, n)
        return values[0, :, 0].copy(), every, some

    if len(bands) == 1:
        parts = [sample(bands[0])]
    else:  # bands read two at a time: the reads and decompression of one overlap the other's
        with ThreadPoolExecutor(2, thread_name_prefix="segsuite-stats") as pool:
            parts = list(pool.map(sample, bands))
    finite = all(every for _, every, _ in parts)
    any_finite = any(some for _, _, some in parts)
    samples = [[values[c] for values, _, _ in parts] for c in range(in_channels)]
    return stats_from_samples([np.concatenate(s) for s in samples], spec, finite=finite, any_finite=any_finite)


class Source:
    """An image for blocks to read from, picklable for dask workers: an array (numpy, dask, zarr), or a
    file path opened lazily (:func:`~.lazy_io.open_lazy`) where it is first read, once per process."""

    def __init__(self, data: Any = None, path: str | None = None) -> None:
        self._data, self.path = data, path

    @property
    def data(self) -> Any:
        if self._data is None:
            from .lazy_io import open_lazy

            self._data = open_lazy(str(self.path)).data
        return self._data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def __getitem__(self, box: Box) -> np.ndarray:
        return read_block(self.data, box)

    def __getstate__(self) -> dict[str, Any]:
        return {"_data": None if self.path else self._data, "path": self.path}


def read_block(data: Any, box: Box) -> np.ndarray:
    """``data[box]`` in memory: a dask array computed here (never on a cluster), zarr and numpy sliced."""
    part = data[box]
    if hasattr(part, "compute"):
        from dask.local import get_sync  # "synchronous" by name would import distributed (a second)

        part = part.compute(scheduler=get_sync)
    return np.asarray(part)
