"""The Annotate dock's Scribbles (live training) section: strokes in, a live prediction refreshed over
the view while the viewer keeps answering, Accept into the labels, undo; Correct this next moves the camera."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_segsuite import sample_data as sd
from napari_segsuite.annotate.live import LiveConfig
from napari_segsuite.widgets.annotate_live import camera, visible_region

#: The longest the GUI thread may go without running a 10 ms timer during live training (under test
#: load on 2 cores: typically 0.05-0.2 s, see bench/live.py).
STALL_LIMIT = 0.5


def _stroke_indices(mask, rng, n=5, half=5):
    pts = np.argwhere(mask)
    ys, xs = [], []
    for y, x in pts[rng.integers(0, len(pts), n)]:
        for dx in range(-half, half):
            if 0 <= x + dx < mask.shape[1] and mask[y, x + dx]:
                ys.append(y)
                xs.append(x + dx)
    return np.array(ys), np.array(xs)


def test_live_training_from_the_dock(make_napari_viewer, qtbot, event_loop_gaps):
    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    s = sd.nuclei_2d(seed=1, shape=(192, 192))
    sem = s["semantic"]
    image = viewer.add_image(s["image"], name="nuclei")
    _, dock = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    dock.image.value = image
    labels = dock.new_labels()
    live = dock.live
    live.config = LiveConfig(refresh=0.6, after_stroke=0.4, patch=96)
    scribbles = live.new_scribbles()
    assert scribbles.name == "nuclei scribbles" and str(scribbles.mode) == "paint"
    rng = np.random.default_rng(0)
    fg, bg = ndi.binary_erosion(sem == 1, iterations=2), ndi.binary_erosion(sem == 0, iterations=4)
    scribbles.data_setitem(_stroke_indices(fg, rng), 2)
    scribbles.data_setitem(_stroke_indices(bg, rng), 1)
    qtbot.wait(200)

    gaps = event_loop_gaps()
    live.start()
    assert live.controls.worker is not None and not live.controls.start_btn.enabled
    qtbot.waitUntil(lambda: live.refreshes >= 2, timeout=30_000)
    prediction = viewer.layers["nuclei live prediction"]
    assert prediction.data.any() and set(np.unique(prediction.data)) <= {0, 1, 2}
    # a stroke while it trains: picked up, and a later refresh has learnt from it
    scribbles.data_setitem(_stroke_indices(fg, rng, n=2), 2)
    qtbot.waitUntil(lambda: bool(live.stroke_delays), timeout=20_000)
    stall = max(gaps[1:])
    print(
        f"\nlive training from the dock: {live.refreshes} refreshes, stroke to refresh {live.stroke_delays[0]:.2f} s, "
        f"longest stall {stall * 1000:.0f} ms over {len(gaps)} ticks"
    )
    assert stall < STALL_LIMIT, f"the viewer stalled for {stall:.2f} s"
    assert live.stroke_delays[0] < 5.0

    # zoomed in, the prediction covers what is on screen, not the whole image
    cam = camera(viewer)
    cam.center, cam.zoom = (40, 50), 8.0
    (ys, xs) = visible_region(viewer, prediction)
    assert 0 < ys.stop - ys.start < 192 and 0 < xs.stop - xs.start < 192 and ys.start <= 40 < ys.stop
    live.toggle_pause()
    assert live.trainer.paused and live.pause_btn.text == "Resume"
    live.toggle_pause()
    assert not live.trainer.paused

    # Accept: into the dock's Labels layer, one undo step
    painted_by_user = (slice(0, 10), slice(0, 10))
    labels.data_setitem(np.nonzero(np.ones((10, 10), bool)), 9)
    n = live.accept()
    assert n > 0 and (labels.data[painted_by_user] == 9).all()
    assert set(np.unique(labels.data)) <= {0, 2, 9}  # class 1 (background) is not copied by default
    assert (labels.data == 2).sum() == n
    labels.undo()
    assert (labels.data == 2).sum() == 0 and (labels.data[painted_by_user] == 9).all()

    live.controls.cancel_btn.clicked()  # Stop
    qtbot.waitUntil(lambda: live.controls.worker is None, timeout=15_000)
    assert "Stopped after" in live.controls.status.value

    # Correct this next: the camera goes to the live model's least certain tile
    cam.center, cam.zoom = (0, 0), 0.5
    worker = live.correct_next()
    with qtbot.waitSignal(worker.finished, timeout=15_000):
        pass
    qtbot.wait(50)
    assert cam.zoom > 1.0 and "uncertain" in live.controls.status.value

    # another image: the last one's prediction is not accepted into it
    dock.image.value = viewer.add_image(s["image"].copy(), name="another")
    assert live.trainer is None and not live.accept_btn.enabled
    assert live.accept() is None and (labels.data == 2).sum() == 0


def test_segment_next_image_ranks_the_candidates_by_uncertainty(make_napari_viewer, qtbot, monkeypatch):
    """Fine-tune's Segment next image scores every in-memory image not in the set and segments the least
    certain (a lazy one is left out of the ranking)."""
    from napari_segsuite.annotate import uncertainty
    from napari_segsuite.model_files import new_model, save_model
    from napari_segsuite.store import model_dir
    from napari_segsuite.widgets import finetune

    model = new_model("unet", label_values=[0, 1], depth=1, base_filters=2)
    model.card.name = "tiny"
    path = str(save_model(model, model_dir() / "tiny"))
    calls = []

    def spy(model, images, rgbs):
        pick, seg, ranking = yield from uncertainty.segment_most_uncertain(model, images, rgbs)
        calls.append((len(images), pick, ranking))
        return pick, seg, ranking

    monkeypatch.setattr(finetune, "segment_most_uncertain", spy)
    viewer = make_napari_viewer()
    for seed, name in ((0, "trained"), (1, "a"), (2, "b")):
        viewer.add_image(sd.nuclei_2d(seed=seed, shape=(64, 64))["image"], name=name)
    import dask.array as da

    lazy = da.from_array(sd.nuclei_2d(seed=3, shape=(64, 64))["image"], chunks=32)
    viewer.add_image(lazy, name="lazy")  # not ranked: ranking would read it whole
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value = viewer.layers["trained"]
    fin.last_path = path
    assert fin.segment_next() is not None
    qtbot.waitUntil(lambda: fin.controls.worker is None, timeout=30_000)
    ((n, pick, ranking),) = calls
    assert n == 2 and ranking is not None and ranking[0][0] == pick
    assert viewer.layers[-1].name == f"{['a', 'b'][pick]} · tiny"
    assert fin.trainset.image.value is viewer.layers[["a", "b"][pick]]


@pytest.mark.screenshot
def test_readme_screenshot_live(make_napari_viewer, qtbot):
    """docs/screenshots/annotate_live.png: image, strokes and the live prediction, the section open, on a laptop screen."""
    from pathlib import Path

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-segsuite", "nuclei2d")
    _, dock = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    viewer.window._qt_window.resize(1366, 768)
    image = viewer.layers["nuclei 2D"]
    sem = viewer.layers["nuclei 2D ground truth (semantic)"].data > 0
    for layer in list(viewer.layers):
        if layer is not image:
            viewer.layers.remove(layer)
    dock.image.value = image
    dock.new_labels()
    live = dock.live
    for section in dock.sections.native.findChildren(type(dock.sections.native)):
        if section.objectName().startswith("section: "):
            section.head.setChecked(section.objectName().endswith("(live training)"))
    scribbles = live.new_scribbles()
    rng = np.random.default_rng(0)
    fg, bg = ndi.binary_erosion(sem, iterations=2), ndi.binary_erosion(~sem, iterations=5)
    for mask, value, half in ((fg, 2, 7), (bg, 1, 12)):
        lines = np.zeros(mask.shape, bool)
        lines[_stroke_indices(mask, rng, n=8, half=half)] = True
        scribbles.data_setitem(np.nonzero(ndi.binary_dilation(lines) & mask), value)  # 3-pixel brush strokes
    live.start()
    qtbot.waitUntil(lambda: live.refreshes >= 6, timeout=60_000)
    live.toggle_pause()
    qtbot.wait(300)
    docs = Path(__file__).parents[2] / "docs" / "screenshots"
    assert viewer.screenshot(str(docs / "annotate_live.png"), canvas_only=False).shape[:2] == (768, 1366)
    live.stop()
    qtbot.waitUntil(lambda: live.controls.worker is None, timeout=15_000)


def test_live_training_on_a_volume_predicts_the_slice_on_screen(make_napari_viewer, qtbot):
    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    s = sd.nuclei_2d(seed=2, shape=(96, 96))
    image = viewer.add_image(np.stack([s["image"]] * 3), name="vol")
    _, dock = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    dock.image.value = image
    live = dock.live
    live.config = LiveConfig(refresh=0.3, patch=64)
    scribbles = live.new_scribbles()
    rng = np.random.default_rng(0)
    sem = s["semantic"]
    for mask, value in (
        (ndi.binary_erosion(sem == 1, iterations=2), 2),
        (ndi.binary_erosion(sem == 0, iterations=4), 1),
    ):
        ys, xs = _stroke_indices(mask, rng)
        scribbles.data_setitem((np.full(len(ys), 1), ys, xs), value)
    viewer.dims.current_step = (2, *viewer.dims.current_step[1:])
    live.start()
    qtbot.waitUntil(lambda: live.refreshes >= 1, timeout=20_000)
    prediction = viewer.layers["vol live prediction"]
    assert prediction.data[2].any() and not prediction.data[0].any() and not prediction.data[1].any()
    live.stop()
    qtbot.waitUntil(lambda: live.controls.worker is None, timeout=15_000)
    # Correct this next with the model picked above (no live model): the slice and the tile
    from napari_segsuite.model_files import new_model, save_model
    from napari_segsuite.store import model_dir

    model = new_model("unet", label_values=[0, 1], depth=1, base_filters=2)
    path = str(save_model(model, model_dir() / "tiny"))
    dock.model.reset_choices()
    dock.model.value = path
    live.trainer = None
    worker = live.correct_next()
    with qtbot.waitSignal(worker.finished, timeout=15_000):
        pass
    qtbot.wait(50)
    assert "uncertain" in live.controls.status.value and viewer.dims.current_step[0] in (0, 1, 2)
