"""Self-supervised pre-training: restoring damaged images is learnt (on images it did not see), and
training runs it first inside the same budget."""

import numpy as np
import pytest
import torch

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import new_model
from napari_segsuite.pretrain import BLOCK, MASKED, damage, pretext_loss, pretrain
from napari_segsuite.progress import drive
from napari_segsuite.samples import unlabelled_inputs
from napari_segsuite.training import TrainConfig, train


def test_damage_blanks_a_share_of_whole_blocks():
    x = torch.rand(4, 1, 64, 80)
    damaged, mask = damage(x, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 64, 80)
    assert abs(float(mask.float().mean()) - MASKED) < 0.1
    assert (damaged[mask.expand_as(x)] == 0).all()
    blocks = mask[:, :, ::BLOCK, ::BLOCK].repeat_interleave(BLOCK, 2).repeat_interleave(BLOCK, 3)
    assert torch.equal(blocks[..., :64, :80], mask)  # whole blocks, not scattered pixels


def test_pretraining_learns_to_restore_images_it_did_not_see():
    model = new_model("unet", label_values=[0, 1], base_filters=8, depth=2)
    seen = unlabelled_inputs(model, [sd.nuclei_2d(seed=i, shape=(96, 96))["image"] for i in range(3)])
    unseen = torch.from_numpy(np.stack(unlabelled_inputs(model, [sd.nuclei_2d(seed=50, shape=(96, 96))["image"]])))

    def held_out_loss() -> float:
        model.module.eval()
        with torch.no_grad():
            return float(pretext_loss(model.module, unseen, torch.Generator().manual_seed(1)))

    before = held_out_loss()
    cpu = torch.device("cpu")
    assert drive(pretrain(model.module, seen, (64, 64), 4, lr=3e-3, device=cpu, steps=60, reset=False)) == 60
    assert held_out_loss() < 0.7 * before
    head = model.module.head.weight.detach().clone()
    drive(pretrain(model.module, seen, (64, 64), 4, lr=3e-3, device=cpu, steps=1))
    assert not torch.equal(model.module.head.weight, head)  # the output layer starts afresh for the labels


def test_training_pretrains_first_within_its_steps_and_refuses_a_bad_share():
    s = sd.nuclei_2d(seed=0, shape=(96, 96))
    model = new_model("unet", label_values=[0, 1], base_filters=8, depth=2)
    cfg = TrainConfig(epochs=1, steps_per_epoch=6, patch_size=64, batch_size=2, pretrain=0.5, calibrate=False)
    notes = []
    work = train(model, [s["image"]], [s["semantic"]], cfg)
    while True:
        try:
            notes.append(next(work).note)
        except StopIteration as stop:
            result = stop.value
            break
    assert sum("pre-training" in n for n in notes) == 3
    assert result.model.card.training["steps"] == 6
    with pytest.raises(ValueError, match="pre-training share"):
        drive(train(model, [s["image"]], [s["semantic"]], TrainConfig(pretrain=1.5)))
