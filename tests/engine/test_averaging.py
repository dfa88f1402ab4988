"""The weight average that training validates and keeps: a moving average early, a plain mean later."""

import pytest
import torch
from torch import nn

from napari_segsuite.averaging import UNIFORM_FROM, UNIFORM_MIN_STEPS, WeightAverage


def _walk(average: WeightAverage, module: nn.Module, total: int) -> None:
    """Steps 1..total whose weights are the step's number (a model that keeps changing)."""
    for step in range(1, total + 1):
        with torch.no_grad():
            module.weight.fill_(float(step))
        average.update(step, total)


def test_late_average_is_the_mean_of_the_weights_since_a_quarter_of_the_run():
    module = nn.Linear(1, 1, bias=False)
    average = WeightAverage(module)
    _walk(average, module, 400)
    start = max(int(UNIFORM_FROM * 400), UNIFORM_MIN_STEPS)
    # the mean of steps start..400, with the moving average up to the switch counted as one of them
    expected = (sum(range(start + 1, 401)) + (start - 10)) / (400 - start + 1)
    assert float(average.module.weight) == pytest.approx(expected, abs=2.0)
    assert float(average.module.weight) < 300  # a moving average over the last tenth would sit near 360


def test_short_runs_keep_the_moving_average():
    """A run shorter than UNIFORM_MIN_STEPS: its early weights stay out of the average."""
    module = nn.Linear(1, 1, bias=False)
    average = WeightAverage(module)
    _walk(average, module, 120)
    assert average.count == 0 and float(average.module.weight) > 100


def test_moving_average_alone_follows_the_last_tenth():
    module = nn.Linear(1, 1, bias=False)
    average = WeightAverage(module, uniform_from=None)
    _walk(average, module, 400)
    assert 350 < float(average.module.weight) < 400


def test_the_average_does_not_train():
    module = nn.Linear(3, 2)
    average = WeightAverage(module)
    assert not any(p.requires_grad for p in average.module.parameters())
    assert all(p.requires_grad for p in module.parameters())
