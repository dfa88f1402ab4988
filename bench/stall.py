"""How long the viewer freezes while the docks work: the longest gap of a 10 ms timer on napari's event loop.

A QTimer fires every 10 ms on the GUI thread; whatever keeps that thread busy (a copy of the layer,
adding the result layer, a plot update, a checkpoint written in a slot) delays its next tick. The
longest delay over a whole run, from the click to the result on screen, is the stall a user feels.
Printed: the longest and the 99th-percentile gap for *Segment* on square images of several sizes
(a tiny UNet, so the run is short and the GUI's own work dominates) and for *Fine-tune* over a few
steps.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/stall.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/stall.py --sizes 1024,2048 --steps 6
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class StallMeter:
    """Record the gaps between the ticks of a 10 ms QTimer on the GUI thread."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def __enter__(self) -> StallMeter:
        self._last = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.stop()

    @property
    def longest(self) -> float:
        """The longest stall in seconds (a gap beyond the timer's own interval)."""
        return max(self.gaps, default=0.0) - self.interval

    @property
    def p99(self) -> float:
        return float(np.percentile(self.gaps, 99)) - self.interval if self.gaps else 0.0


def run_measured(app: Any, start: Callable[[], Any], is_done: Callable[[], bool], settle: float = 0.5) -> StallMeter:
    """Click ``start`` from inside the event loop and pump events until ``is_done()``, then ``settle`` s more
    (the result's first draw)."""
    from qtpy.QtCore import QTimer

    with StallMeter() as meter:
        started: list[Any] = []
        QTimer.singleShot(20, lambda: started.append(start()))
        t_end = None
        while True:
            app.processEvents()
            time.sleep(0.001)
            if started and is_done():
                t_end = t_end or time.perf_counter()
                if time.perf_counter() - t_end > settle:
                    break
    return meter


def nuclei_image(size: int) -> np.ndarray:
    """A ``size`` x ``size`` float32 image of generated nuclei (one 256 x 256 sample, tiled)."""
    from napari_segsuite import sample_data as sd

    tile = sd.nuclei_2d(seed=0, shape=(256, 256))["image"].astype(np.float32)
    reps = -(-size // 256)
    return np.ascontiguousarray(np.tile(tile, (reps, reps))[:size, :size])


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    app, t0 = QApplication.instance(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()  # type: ignore[union-attr]
        time.sleep(0.005)


def tiny_model(name: str, folder: str, arch: str = "unet-instance") -> str:
    """A tiny untrained model (depth 2, 4 filters) saved under ``folder``; an instance model by default, so the
    result carries an objects table (the heaviest result to show)."""
    from napari_segsuite.model_files import new_model, save_model

    values = [0, 1, 2] if arch.endswith("instance") else [0, 1]
    model = new_model(arch, label_values=values, depth=2, base_filters=4)
    model.card.name = name
    return str(save_model(model, os.path.join(folder, name)))


def segment_stall(viewer: Any, model_path: str, size: int, tile: int = 512) -> tuple[StallMeter, float]:
    from qtpy.QtWidgets import QApplication

    image = viewer.add_image(nuclei_image(size), name=f"img{size}")
    pump(0.5)  # the image's own first draw is napari's, not the dock's
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.image.value, seg.tile.value = image, tile
    seg.model.reset_choices()
    seg.model.value = model_path
    n = len(viewer.layers)
    t0 = time.perf_counter()
    done = lambda: seg.controls.worker is None and all(la.visible for la in viewer.layers)  # noqa: E731
    meter = run_measured(QApplication.instance(), seg.run, done)  # done: the result shown (it is, in steps)
    assert len(viewer.layers) == n + 1, seg.controls.status.value
    took = time.perf_counter() - t0
    viewer.window.remove_dock_widget(seg.native.parent())
    viewer.layers.clear()
    return meter, took


def finetune_stall(viewer: Any, steps: int) -> tuple[StallMeter, float]:
    from qtpy.QtWidgets import QApplication

    from napari_segsuite import sample_data as sd
    from napari_segsuite.widgets import finetune

    s = sd.nuclei_2d(seed=0, shape=(256, 256))
    image = viewer.add_image(s["image"], name="cells")
    labels = viewer.add_labels(s["semantic"], name="cells truth")
    finetune.TrainConfig = functools.partial(finetune.TrainConfig, steps_per_epoch=max(1, steps // 2), batch_size=2)  # type: ignore[misc]
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    fin.trainset.image.value, fin.trainset.labels_layer.value = image, labels
    fin.base.value, fin.epochs.value, fin.model_name.value = "unet", 2, "stall-bench"
    pump(0.5)  # the first draw of the layers and the dock is napari's, not the run's
    t0 = time.perf_counter()
    meter = run_measured(QApplication.instance(), fin.run, lambda: fin.controls.worker is None)
    assert fin.controls.status.value.startswith("Saved"), fin.controls.status.value
    return meter, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096", help="edges of the square images to segment")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps of the Fine-tune run")
    ap.add_argument("--arch", default="unet-instance", help="architecture of the tiny untrained model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()

    import napari
    import torch

    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="segsuite-stall-")
    os.environ["SEGSUITE_MODEL_DIR"] = folder
    model_path = tiny_model("tiny", folder, args.arch)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    segment_stall(viewer, model_path, 256)  # napari's first Labels layer costs a one-off set-up: not counted
    rows = []
    for size in (int(s) for s in args.sizes.split(",") if s):
        meter, took = segment_stall(viewer, model_path, size)
        rows.append((f"Segment {size}x{size}", meter, took))
    if args.steps > 0:
        meter, took = finetune_stall(viewer, args.steps)
        rows.append((f"Fine-tune {args.steps} steps (256x256)", meter, took))
    print(f"\n{'run':<32} {'longest stall (ms)':>19} {'p99 gap (ms)':>13} {'run (s)':>8}")
    for name, meter, took in rows:
        print(f"{name:<32} {meter.longest * 1000:>19.0f} {meter.p99 * 1000:>13.0f} {took:>8.1f}")
    viewer.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
