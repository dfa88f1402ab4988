"""The weight average that training validates and keeps: a moving average early, a plain mean later."""

import pytest
import torch
from torch import nn

from napari_segsuite.averaging import UNIFORM_FROM, UNIFORM_MIN_STEPS, WeightAverage, refresh_norm_stats


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


def test_refreshed_norm_statistics_belong_to_the_averaged_weights():
    """The averaged running statistics of a layer whose weights moved are those of no weights at all:
    after the refresh they are the statistics of the batches through the averaged weights."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3))
    with torch.no_grad():
        module[0].weight.fill_(1.0)
    module[1].running_mean.fill_(50.0)  # statistics measured with other weights
    module[1].running_var.fill_(9.0)
    module.eval()
    data = [torch.randn(16, 4) + 2.0 for _ in range(5)]
    feed = iter(data)
    assert refresh_norm_stats(module, lambda: next(feed), count=5)
    outputs = torch.cat([module[0](x) for x in data])
    torch.testing.assert_close(module[1].running_mean, outputs.mean(0), rtol=1e-4, atol=1e-4)
    assert not module.training and module[1].momentum == 0.1  # left as it was found
    # with the refreshed statistics the layer's outputs over these batches are about standardised
    with torch.no_grad():
        out = module(torch.cat(data))
    assert out.mean(0).abs().max() < 0.05 and (out.std(0) - 1).abs().max() < 0.1


def test_refresh_leaves_models_without_batch_norm_alone():
    module = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    assert not refresh_norm_stats(module, lambda: torch.randn(2, 4), count=3)
