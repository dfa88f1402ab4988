"""The prefetch thread never outlives what it works for: closed, dropped or left waiting, it ends."""

import gc
import itertools
import threading

import numpy as np

from napari_segsuite import augment
from napari_segsuite import sample_data as sd
from napari_segsuite.augment import Prefetch
from napari_segsuite.model_files import new_model
from napari_segsuite.training import TrainConfig, train


def _ends(thread: threading.Thread, seconds: float = 10) -> bool:
    thread.join(timeout=seconds)
    return not thread.is_alive()


def test_a_dropped_prefetch_stops_its_thread():
    """Its thread used to hold the object (a bound method), so neither was ever freed."""
    p = Prefetch(lambda: (np.zeros(1), np.zeros(1)))  # type: ignore[arg-type, return-value]
    p.next()
    thread = p._thread
    assert thread is not None and thread.is_alive()
    del p
    gc.collect()
    assert _ends(thread)


def test_an_idle_prefetch_thread_ends_and_comes_back_in_order():
    counter = itertools.count()
    p = Prefetch(lambda: next(counter), depth=1, idle=0.2)  # type: ignore[arg-type, return-value]
    assert p.next() == 0
    thread = p._thread
    assert thread is not None and _ends(thread)  # nobody took a batch for 0.2 s
    assert [p.next() for _ in range(4)] == [1, 2, 3, 4]  # restarted; the batch it held comes first
    p.close()


def test_an_abandoned_training_generator_does_not_keep_its_thread(monkeypatch):
    """A training generator kept but never resumed nor closed (a front end that forgot it). Batch
    threads run beside a GPU; here they are asked for on the CPU."""
    from napari_segsuite import training

    monkeypatch.setattr(augment, "IDLE_SECONDS", 0.3)
    monkeypatch.setattr(training, "background_batches", lambda device_type: True)
    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = new_model("unet", label_values=[0, 1], base_filters=4, depth=2)
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, patch_size=32, batch_size=2, device="cpu", calibrate=False)
    gen = train(model, [s["image"]] * 2, [s["semantic"]] * 2, cfg)
    next(gen)
    threads = [t for t in threading.enumerate() if t.name == "segsuite-batches"]
    assert threads and all(_ends(t) for t in threads)
    rest = list(itertools.islice(gen, 10))  # resuming still works: the thread starts again
    assert len(rest) >= 2
    gen.close()


def test_batches_from_several_threads_come_in_turn_and_in_order():
    from napari_segsuite.augment import Batches, batch_threads

    def counter(tag: str):
        n = iter(range(100))
        return lambda: (tag, next(n))

    b = Batches([counter("a"), counter("b"), counter("c")])
    try:
        got = [b.next() for _ in range(7)]
    finally:
        b.close()
    assert got == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 2)]
    assert batch_threads("cpu", 16) == 1 and batch_threads("cuda", 16) == 4 and batch_threads("cuda", 2) == 1


def test_on_the_cpu_batches_are_made_between_steps():
    """No batch thread beside CPU training: the cores that would run it are the ones training."""
    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = new_model("unet", label_values=[0, 1], base_filters=4, depth=2)
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, patch_size=32, batch_size=2, device="cpu", calibrate=False)
    before = {t for t in threading.enumerate() if t.name == "segsuite-batches"}
    gen = train(model, [s["image"]] * 2, [s["semantic"]] * 2, cfg)
    next(gen)
    assert {t for t in threading.enumerate() if t.name == "segsuite-batches"} <= before
    gen.close()
