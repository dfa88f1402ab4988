"""Lazy readers: zarr, OME-Zarr (level 0, voxel size), TIFF through tifffile's zarr store; blocks read
only their chunks."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_segsuite.lazy_io import Source, as_dask, is_lazy, norm_stats, open_lazy, require
from napari_segsuite.preprocess import infer_axes, normalization_stats, to_slices


@pytest.fixture
def chunk_reads(monkeypatch):
    """Keys of the zarr chunks read from disk (every LocalStore.get of a chunk)."""
    reads = []
    orig = zarr.storage.LocalStore.get

    async def get(self, key, *args, **kwargs):
        if "/c/" in f"/{key}" or key.split("/")[-1].replace(".", "").isdigit():
            reads.append(key)
        return await orig(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    return reads


def test_zarr_block_reads_only_its_chunks(tmp_path, chunk_reads):
    img = np.arange(256 * 192, dtype=np.uint16).reshape(256, 192)
    zarr.create_array(tmp_path / "a.zarr", data=img, chunks=(64, 64))
    lazy = open_lazy(tmp_path / "a.zarr")
    assert is_lazy(lazy.data) and lazy.data.shape == (256, 192) and not chunk_reads
    part = Source(lazy.data)[(slice(60, 130), slice(0, 64))]  # rows over 3 chunks, one chunk column
    np.testing.assert_array_equal(part, img[60:130, :64])
    assert len(chunk_reads) == 3


def test_norm_stats_match_in_memory_and_read_by_bands(tmp_path, chunk_reads, monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.normal(100, 20, (300, 200)).astype(np.float32)
    img[5, 7] = np.nan
    zarr.create_array(tmp_path / "f.zarr", data=img, chunks=(50, 200))
    monkeypatch.setattr("napari_segsuite.lazy_io.BAND_VALUES", 100 * 200)  # 3 bands of 2 chunks
    monkeypatch.setattr("napari_segsuite.preprocess.SAMPLE_VALUES", 7000)  # a strided sample, as for big images
    got = norm_stats(open_lazy(tmp_path / "f.zarr").data, False, 1, None)
    want = normalization_stats(to_slices(img, infer_axes(img.shape), 1))
    assert got == want and got.partial
    assert len(chunk_reads) == 6  # each chunk once


@pytest.mark.parametrize(
    ("shape", "dtype", "channels"),
    [((6, 90, 70), np.uint16, 1), ((120, 90, 3), np.uint8, 1), ((120, 90, 4), np.uint8, 3), ((100, 80), np.float64, 1)],
)
def test_norm_stats_of_volumes_and_colour_match_in_memory(tmp_path, monkeypatch, shape, dtype, channels):
    """The sample is taken from the raw pixels and converted after (RGB averaged, alpha dropped, float64
    cast): the same values as the in-memory path, which converts first."""
    rng = np.random.default_rng(1)
    img = (rng.random(shape) * 250).astype(dtype)
    if dtype == np.float64:
        img[3, 4] = 1e300  # finite in float64, not as the network sees it (float32)
    zarr.create_array(tmp_path / "g.zarr", data=img, chunks=tuple(min(32, n) for n in shape))
    monkeypatch.setattr("napari_segsuite.lazy_io.BAND_VALUES", 40 * 90)
    monkeypatch.setattr("napari_segsuite.preprocess.SAMPLE_VALUES", 3000)
    axes = infer_axes(img.shape)
    got = norm_stats(open_lazy(tmp_path / "g.zarr").data, axes.rgb, channels, None)
    assert got == normalization_stats(to_slices(img, axes, channels))


def test_ome_zarr_level0_and_voxel_size(tmp_path, chunk_reads):
    from ome_zarr.writer import write_image

    vol = np.random.default_rng(0).integers(0, 255, (1, 8, 64, 96), dtype=np.uint8)
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    write_image(
        vol, root, axes="czyx", scale_factors=(2,), storage_options={"chunks": (1, 4, 32, 32)},
        scale={"z": 2.0, "y": 0.5, "x": 0.5}, axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )  # fmt: skip
    chunk_reads.clear()
    lazy = open_lazy(tmp_path / "img.ome.zarr")
    assert lazy.data.shape == (8, 64, 96)  # level 0, channel axis of 1 dropped
    assert lazy.voxel_size == (2.0, 0.5, 0.5) and lazy.unit == "micrometer" and lazy.ome_root is not None
    assert [a["name"] for a in lazy.ngff_axes] == ["z", "y", "x"]
    np.testing.assert_array_equal(Source(lazy.data)[(slice(0, 4), slice(0, 32), slice(0, 32))], vol[0, :4, :32, :32])
    assert len(chunk_reads) == 1


def test_tiff_through_zarr_store(tmp_path):
    img = np.random.default_rng(0).integers(0, 60000, (256, 320), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "big.tif", img, tile=(64, 64), resolution=(2.0, 2.0), imagej=True, metadata={"unit": "um"}
    )
    lazy = open_lazy(tmp_path / "big.tif")
    assert lazy.data.chunks == ((64,) * 4, (64,) * 5)  # one dask chunk per TIFF tile: read tile by tile
    np.testing.assert_array_equal(Source(lazy.data)[(slice(70, 90), slice(100, 200))], img[70:90, 100:200])
    assert lazy.voxel_size == pytest.approx((0.5, 0.5))


def test_dask_layer_data_stays_lazy():
    import dask.array as da

    arr = da.zeros((100, 100), chunks=50)
    assert as_dask(arr) is arr and is_lazy(arr) and not is_lazy(np.zeros(3))


def test_missing_extra_names_it(monkeypatch):
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda n, *a: (_ for _ in ()).throw(ImportError(n)) if n == "zarr" else real(n, *a)
    )
    with pytest.raises(ImportError, match=r"napari-segsuite\[big\]"):
        require("zarr")


def test_reading_a_dask_block_does_not_import_distributed():
    """dask's scheduler named "synchronous" imports dask.distributed to look for a client (a second or
    more, paid in the first block of a run); the scheduler passed as a function does not."""
    import subprocess
    import sys

    code = (
        "import sys, dask.array as da; from napari_segsuite.lazy_io import read_block; "
        "x = read_block(da.ones((64, 64), chunks=16), (slice(10, 40), slice(0, 20))); "
        "assert x.shape == (30, 20) and x.sum() == 600; print('distributed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
