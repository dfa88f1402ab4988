"""An exponential moving average of a model's weights, the copy that validation scores and training keeps.

Short CPU runs end at a high learning rate's noisy weights; their running average over the last
tenth of the run or so is a steadier model (as in Polyak averaging). Batch-norm statistics are
averaged the same way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """A shadow copy of ``module`` whose weights follow the module's by an exponential moving average.

    Args:
        module: The model being trained.
        share: The average spans about this share of the run's expected steps (at least 10 steps).
    """

    def __init__(self, module: nn.Module, share: float = 0.1) -> None:
        self.module = copy.deepcopy(module)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.share = share
        self._pairs = [
            (a, b)
            for a, b in zip(self.module.state_dict().values(), module.state_dict().values())
            if a.is_floating_point()
        ]
        self._counts = [
            (a, b)
            for a, b in zip(self.module.state_dict().values(), module.state_dict().values())
            if not a.is_floating_point()
        ]

    def decay(self, step: int, expected_total: int) -> float:
        """The averaging weight of the past at ``step`` (short early on, so the average is never stale)."""
        horizon = max(10.0, self.share * expected_total)
        return min(1.0 - 1.0 / horizon, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, step: int, expected_total: int) -> None:
        """Move the average towards the module's current weights (after an optimiser step)."""
        d = self.decay(step, expected_total)
        shadow = [a for a, _ in self._pairs]
        live = [b.detach() for _, b in self._pairs]
        torch._foreach_lerp_(shadow, live, 1.0 - d)
        for a, b in self._counts:
            a.copy_(b)
