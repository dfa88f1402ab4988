"""The viewer keeps answering while Segment works: the layer copy, the objects table and the ids'
dtype are made in the worker; the GUI thread only adds the layer (bench/stall.py prints the numbers)."""

import threading

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import new_model, save_model
from napari_segsuite.store import model_dir


def _segment_measured(
    make_napari_viewer, qtbot, monkeypatch, event_loop_gaps, reps: int
) -> tuple[list[float], list[str], object]:
    """Segment a (256 * reps)^2 image with a tiny instance model; the gaps of a 10 ms timer, the threads
    the objects table was made on, and the result layer."""
    from qtpy.QtCore import QTimer

    from napari_segsuite.widgets import _layers

    tables_made_on: list[str] = []
    real = _layers.object_table
    monkeypatch.setattr(
        _layers, "object_table", lambda *a, **k: tables_made_on.append(threading.current_thread().name) or real(*a, **k)
    )
    model = new_model("unet-instance", label_values=[0, 1, 2], depth=2, base_filters=4)
    model.card.name = "tiny"
    path = str(save_model(model, model_dir() / "tiny"))
    tile = sd.nuclei_2d(seed=0, shape=(256, 256))["image"].astype(np.float32)
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.tile(tile, (reps, reps)), name="big")
    viewer.layers.remove(viewer.add_labels(np.zeros((8, 8), np.uint8)))  # napari's one-off set-up of Labels
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.model.reset_choices()
    seg.image.value, seg.model.value, seg.tile.value = image, path, 1024
    qtbot.wait(300)  # the image's own first draw is napari's

    gaps = event_loop_gaps()
    QTimer.singleShot(20, seg.run)
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120_000)
    qtbot.wait(300)  # the result's first draw
    return gaps, tables_made_on, viewer.layers[-1]


def test_segment_result_is_made_off_the_gui_thread(make_napari_viewer, qtbot, monkeypatch, event_loop_gaps):
    _, tables_made_on, result = _segment_measured(make_napari_viewer, qtbot, monkeypatch, event_loop_gaps, 1)
    assert result.data.dtype == np.uint16 and "area" in result.features  # napari shows uint16 ids as they are
    assert tables_made_on and "MainThread" not in tables_made_on


@pytest.mark.slow  # about 30 s on a loaded 2-core machine
def test_segment_2048_does_not_stall_the_viewer(make_napari_viewer, qtbot, monkeypatch, event_loop_gaps):
    gaps, tables_made_on, result = _segment_measured(make_napari_viewer, qtbot, monkeypatch, event_loop_gaps, 8)
    assert result.data.dtype == np.uint16 and "area" in result.features  # napari shows uint16 ids as they are
    assert tables_made_on and "MainThread" not in tables_made_on
    # today's code: 0.7-3.2 s (the copy, the objects table and 32-bit ids hashed on the GUI thread); now
    # 0.3-0.55 s on a loaded 2-core machine with llvmpipe: napari's own cost of adding a Labels layer
    assert max(gaps) < 1.0, f"the viewer stalled for {max(gaps):.2f} s"
