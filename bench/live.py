"""Scribbles with live training: how soon a stroke shows in the prediction, and whether the viewer freezes.

Two measurements on a 512 x 512 nuclei image with a few strokes per class:

- **engine**: :class:`~napari_segsuite.annotate.live.LiveTrainer` runs in a thread with its default
  settings, predicting over the whole image; every few seconds a new stroke is handed over
  (``update_labels``) and the time until the first prediction trained on it is recorded.
- **dock**: the same from the Annotate dock's *Scribbles (live training)* section in a shown viewer:
  strokes painted through ``data_setitem`` (as the brush does), the time from the stroke to the first
  redrawn prediction that learnt from it, and the longest gap of a 10 ms timer on napari's event loop
  (:class:`stall.StallMeter`): at *Start* (napari adding the prediction layer) and while it trains
  (each redraw of a 512 x 512 region costs the GUI thread about 4 ms, and napari's repaint 40-100 ms
  with software OpenGL).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/live.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/live.py --strokes 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _scene(size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    from napari_segsuite import sample_data as sd

    s = sd.nuclei_2d(seed=seed, shape=(size, size))
    return s["image"], s["semantic"]


def _stroke(sem: np.ndarray, value: int, rng: np.random.Generator, half: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a short horizontal stroke well inside class ``value`` (2 nucleus, 1 background)."""
    from scipy import ndimage as ndi

    mask = ndi.binary_erosion(sem == (1 if value == 2 else 0), iterations=2 if value == 2 else 4)
    y, x = np.argwhere(mask)[rng.integers(0, int(mask.sum()))]
    xs = np.arange(max(0, x - half), min(mask.shape[1], x + half))
    xs = xs[mask[y, xs]]
    return np.full(len(xs), y), xs


def _first_strokes(sem: np.ndarray, rng: np.random.Generator, n: int = 6) -> np.ndarray:
    strokes = np.zeros(sem.shape, np.int32)
    for value in (1, 2):
        for _ in range(n):
            strokes[_stroke(sem, value, rng)] = value
    return strokes


def engine(size: int, strokes_n: int, gap: float) -> dict[str, float]:
    from napari_segsuite.annotate.live import LiveTrainer

    image, sem = _scene(size)
    rng = np.random.default_rng(0)
    strokes = _first_strokes(sem, rng)
    trainer = LiveTrainer(image, strokes)
    preds: list[tuple[float, int, int]] = []
    thread = threading.Thread(
        target=lambda: preds.extend((time.perf_counter(), p.version, p.step) for p in trainer.run())
    )
    thread.start()
    while len(preds) < 2:
        time.sleep(0.05)
    delays, predict_s = [], []
    for _ in range(strokes_n):
        strokes = strokes.copy()
        strokes[_stroke(sem, int(rng.integers(1, 3)), rng)] = int(rng.integers(1, 3))
        t = time.perf_counter()
        trainer.update_labels(strokes)
        want = trainer.version + 1
        while not any(v >= want and at > t for at, v, _ in preds):
            time.sleep(0.01)
        delays.append(min(at for at, v, _ in preds if v >= want and at > t) - t)
        time.sleep(gap)
    t = time.perf_counter()
    trainer.predict()
    predict_s.append(time.perf_counter() - t)
    trainer.stop()
    thread.join()
    return {
        "stroke_to_refresh_median_s": float(np.median(delays)),
        "stroke_to_refresh_max_s": float(np.max(delays)),
        "steps_per_s": (preds[-1][2] - preds[0][2]) / max(1e-6, preds[-1][0] - preds[0][0]),  # predictions included
        "predict_512_s": predict_s[0],
    }


def dock(size: int, strokes_n: int, gap: float) -> dict[str, float]:
    import napari
    from qtpy.QtWidgets import QApplication
    from stall import StallMeter

    image, sem = _scene(size)
    rng = np.random.default_rng(0)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    layer = viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segsuite", "Annotate")
    widget.image.value = layer
    widget.new_labels()
    live = widget.live
    scribbles = live.new_scribbles()
    first = _first_strokes(sem, rng)
    where = np.nonzero(first)
    scribbles.data_setitem(where, first[where])

    def wait(cond, timeout: float) -> None:
        end = time.perf_counter() + timeout
        while not cond() and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.002)

    wait(lambda: False, 0.5)
    with StallMeter() as meter:
        live.start()
        wait(lambda: live.refreshes >= 2, 60)
        for _ in range(strokes_n):
            value = int(rng.integers(1, 3))
            n = len(live.stroke_delays)
            scribbles.data_setitem(_stroke(sem, value, rng), value)
            wait(lambda n=n: len(live.stroke_delays) > n, 30)
            wait(lambda: False, gap)
        live.stop()
        wait(lambda: live.controls.worker is None, 30)
    viewer.close()
    return {
        "stroke_to_refresh_median_s": float(np.median(live.stroke_delays)),
        "stroke_to_refresh_max_s": float(np.max(live.stroke_delays)),
        "refreshes": float(live.refreshes),
        "start_stall_ms": (meter.gaps[0] - meter.interval) * 1000,  # Start: napari adds the prediction layer
        "longest_stall_ms": (max(meter.gaps[1:]) - meter.interval) * 1000,  # while it trains and redraws
        "p99_stall_ms": meter.p99 * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--strokes", type=int, default=4, help="strokes painted during each run")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between a refresh and the next stroke")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--skip-dock", action="store_true", help="the engine only (no display needed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = {"engine": engine(args.size, args.strokes, args.gap)}
    if not args.skip_dock:
        rows["dock"] = dock(args.size, args.strokes, args.gap)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"live training on {args.size}x{args.size}, {args.strokes} strokes, torch threads {args.threads}")
    print(f"{'run':8} {'metric':28} {'value':>10}")
    for run, metrics in rows.items():
        for k, v in metrics.items():
            print(f"{run:8} {k:28} {v:10.2f}")


if __name__ == "__main__":
    main()
