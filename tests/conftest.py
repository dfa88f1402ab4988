import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # smp would otherwise retry downloads for ~23 s

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_model_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty user model folder."""
    monkeypatch.setenv("SEGSUITE_MODEL_DIR", str(tmp_path_factory.mktemp("models")))
    torch.manual_seed(0)
    np.random.seed(0)
