"""Live training on scribbles (annotate/live.py): it learns the unpainted pixels from a few strokes,
picks up strokes painted while it runs (a new class included, without restarting), pauses, resumes,
stops, and Accept writes only where the user has not painted."""

import threading
import time

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_segsuite import sample_data as sd
from napari_segsuite.annotate.live import LiveConfig, LiveTrainer


def _strokes(sem, rng, per_class=6, half=6):
    """Short horizontal strokes well inside nuclei (2) and background (1)."""
    out = np.zeros(sem.shape, np.int32)
    inner = {2: ndi.binary_erosion(sem == 1, iterations=2), 1: ndi.binary_erosion(sem == 0, iterations=4)}
    for value, mask in inner.items():
        pts = np.argwhere(mask)
        for y, x in pts[rng.integers(0, len(pts), per_class)]:
            win = (slice(y, y + 1), slice(max(0, x - half), x + half))
            out[win] = np.where(mask[win], value, out[win])
    return out


@pytest.fixture
def scene():
    torch.set_num_threads(1)
    s = sd.nuclei_2d(seed=1, shape=(160, 160))
    return s["image"], s["semantic"] + 1, _strokes(s["semantic"], np.random.default_rng(0))


def _steps(trainer, n):
    """Drive ``run`` (a prediction after every step) until ``n`` steps; the last prediction."""
    for pred in trainer.run():
        if pred.step >= n:
            trainer.stop()
    return trainer.latest


def test_live_training_learns_the_unpainted_pixels(scene):
    image, truth, strokes = scene
    unpainted = strokes == 0
    assert unpainted.mean() > 0.99
    trainer = LiveTrainer(image, strokes, config=LiveConfig(refresh=0.0))
    before = (trainer.predict().classes == truth)[unpainted].mean()
    pred = _steps(trainer, 50)
    after = (pred.classes == truth)[unpainted].mean()
    assert pred.step == 50 and pred.probs.shape == (2, 160, 160) and np.allclose(pred.probs.sum(0), 1, atol=1e-4)
    assert after > 0.75 and after > before + 0.2, (before, after)


def test_strokes_painted_while_it_runs_are_picked_up_and_a_new_class_grows_the_head(scene):
    image, truth, strokes = scene
    trainer = LiveTrainer(image, strokes, config=LiveConfig(refresh=0.0, patch=96))
    first_conv = next(trainer.model.module.parameters())
    seen = []
    for pred in trainer.run():
        seen.append((pred.step, pred.version, int(pred.classes.max())))
        if pred.step == 5:  # a stroke of a third class, painted in the middle of the run
            more = strokes.copy()
            more[150:154, 10:40] = 3
            trainer.update_labels(more)
        if pred.step >= 12:
            trainer.stop()
    assert trainer.version == 2 and trainer.classes == 3
    assert next(trainer.model.module.parameters()) is first_conv  # warm: the same network, its output widened
    assert [s for s, *_ in seen] == list(range(1, 13))  # steps go on counting, nothing restarted
    assert all(v == 1 for s, v, _ in seen if s <= 5) and all(v == 2 for s, v, _ in seen if s > 5)
    assert trainer.latest.probs.shape[0] == 3


def test_pause_resume_stop_from_another_thread(scene):
    image, _, strokes = scene
    trainer = LiveTrainer(image, strokes, config=LiveConfig(refresh=0.3, patch=64))
    preds = []
    thread = threading.Thread(target=lambda: preds.extend(trainer.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while trainer.step < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    trainer.pause()
    paused_at = -1
    while trainer.step != paused_at and time.monotonic() < deadline:  # the step under way ends
        paused_at = trainer.step
        time.sleep(0.4)
    time.sleep(0.6)
    assert trainer.paused and trainer.step == paused_at
    trainer.resume()
    while trainer.step < paused_at + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.step >= paused_at + 3
    trainer.stop()
    thread.join(timeout=5)
    assert not thread.is_alive() and preds


def test_view_region_and_accept_writes_only_unpainted_pixels(scene):
    image, _, strokes = scene
    trainer = LiveTrainer(image, strokes, config=LiveConfig(refresh=0.0, patch=64))
    trainer.set_view((slice(20, 80), slice(100, 400)))  # clipped to the image
    pred = trainer.predict()
    assert pred.region == (slice(20, 80), slice(100, 160)) and pred.classes.shape == (60, 60)
    assert (trainer.prediction[20:80, 100:] > 0).all() and not trainer.prediction[:20].any()
    user = np.zeros((160, 160), np.int32)
    user[30:40, 110:120] = 7
    where, values = trainer.accept(user)
    assert len(where[0]) == 60 * 60 - 100 and values.dtype == np.int32
    assert not (user[where] != 0).any() and set(np.unique(values)) <= {1, 2}
    where2, values2 = trainer.accept(user, classes=[2])
    assert set(np.unique(values2)) <= {2} and len(where2[0]) <= len(where[0])
    with pytest.raises(ValueError, match="image is"):
        trainer.update_labels(np.zeros((10, 10), np.int32))


def test_a_volume_trains_on_the_slices_that_hold_strokes():
    torch.set_num_threads(1)
    s = sd.nuclei_2d(seed=2, shape=(96, 96))
    vol = np.stack([s["image"]] * 3)
    strokes = np.zeros(vol.shape, np.int32)
    strokes[1] = _strokes(s["semantic"], np.random.default_rng(1))
    trainer = LiveTrainer(vol, strokes, config=LiveConfig(refresh=0.0, patch=64))
    trainer.set_view((slice(2, 3), slice(None), slice(None)))
    pred = _steps(trainer, 3)
    assert pred.region[0] == slice(2, 3) and pred.classes.shape == (1, 96, 96) and pred.probs.shape == (2, 1, 96, 96)
    assert trainer.prediction[2].all() and not trainer.prediction[0].any()
