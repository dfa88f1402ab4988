"""Contract tests over the whole registry (as timm and smp do): what the registry declares of each
model agrees with the module, and a saved model loads back giving identical outputs."""

import pytest
import torch

from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.models import available
from napari_segsuite.models.base import ObjectModel, encoder_of
from napari_segsuite.tasks import get_task, task_names


def _new(spec):
    things = [1] if get_task(spec.kind).takes_objects else None
    return new_model(spec.name, label_values=[0, 1, 2], thing_classes=things)


def _input(spec):
    side = 64 if spec.divisible_by <= 64 else spec.divisible_by
    shape = (8, side, side) if spec.spatial_dims == 3 else (side, side)
    return torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", available(), ids=lambda s: s.name)
def test_save_load_gives_identical_outputs_and_the_declarations_hold(spec, tmp_path):
    model = _new(spec)
    assert spec.kind in task_names()  # every model's task exists
    card = model.card
    assert (card.kind, card.spatial_dims, card.divisible_by) == (spec.kind, spec.spatial_dims, spec.divisible_by)
    assert (encoder_of(model.module) is not None) == spec.has_encoder  # freezing is offered only with an encoder
    assert isinstance(model.module, ObjectModel) == spec.objects
    model.module.eval()
    x = _input(spec)
    loaded = load_model(save_model(model, tmp_path / spec.name))
    with torch.no_grad():
        if isinstance(model.module, ObjectModel):
            a, b = model.module.detect(x, score_threshold=0.0), loaded.module.detect(x, score_threshold=0.0)
            assert all(
                torch.equal(p["scores"], q["scores"]) and torch.equal(p["masks"], q["masks"]) for p, q in zip(a, b)
            )
        else:
            out = model.module(x)
            assert torch.equal(out, loaded.module(x))
            assert out.shape == (1, get_task(spec.kind).output_channels(card), *x.shape[2:])  # spatial dims as declared
    wrong = torch.randn(1, 1, *([16] * (5 - spec.spatial_dims)))  # the other dimensionality is refused
    with pytest.raises(Exception), torch.no_grad():
        model.module(wrong)
