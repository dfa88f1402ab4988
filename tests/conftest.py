import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # smp would otherwise retry downloads for ~23 s

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # tests in parallel processes: one core each, no oversubscription
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def _isolated_model_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user model folder."""
    monkeypatch.setenv("SEGSUITE_MODEL_DIR", str(tmp_path_factory.mktemp("models")))
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def event_loop_gaps():
    """``start()`` starts a 10 ms timer on the Qt event loop and returns the list its ticks fill with the
    gaps (seconds) between them: the longest is the longest stall. The timer stops with the test."""
    import time

    from qtpy.QtCore import QTimer

    gaps: list[float] = []
    last = [time.perf_counter()]
    timer = QTimer()

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    def start() -> list[float]:
        last[0] = time.perf_counter()
        timer.setInterval(10)
        timer.timeout.connect(tick)
        timer.start()
        return gaps

    yield start
    timer.stop()
