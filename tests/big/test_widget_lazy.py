"""The Segment widget on a dask-backed layer: never read whole, result is an on-disk zarr Labels layer."""

import numpy as np

from napari_segsuite.inference import segment
from napari_segsuite.model_files import load_model
from napari_segsuite.progress import drive


class Recording:
    """A lazy array that records every box read from it."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, box):
        part = self.data[box]
        self.reads.append(part.size)
        return part


def test_dask_layer_is_segmented_block_by_block_into_zarr(make_napari_viewer, qtbot, monkeypatch):
    import dask.array as da
    import zarr

    monkeypatch.setattr("napari_segsuite.widgets.segment.BIG_LAYER_VALUES", 0)  # this small layer counts as big
    monkeypatch.setattr("napari_segsuite.blockwise.BLOCK", 128)
    img = (np.random.default_rng(0).random((300, 280)) * 255).astype(np.uint8)
    rec = Recording(img)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(rec, chunks=64, asarray=False), name="big")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value = layer
    seg.tile.value = 128
    seg.device.value = "cpu"
    rec.reads.clear()
    assert seg.run() is not None
    qtbot.waitUntil(lambda: seg.controls.worker is None, timeout=60_000)
    out = viewer.layers[-1]
    assert isinstance(out.data, zarr.Array)
    assert rec.reads and max(rec.reads) <= 64 * 64  # chunk by chunk: never the whole image
    model = load_model(seg.model.value)
    ref = drive(segment(model, img, tile=128, device="cpu")).labels
    np.testing.assert_array_equal(out.data[:], ref)
