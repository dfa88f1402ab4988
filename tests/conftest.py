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
