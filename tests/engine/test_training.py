import time

import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.inference import predict
from napari_segsuite.model_files import load_model, new_model
from napari_segsuite.progress import drive
from napari_segsuite.tasks import semantic
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import model_for_training


def _nuclei(seeds):
    data = [sd.nuclei_2d(seed=s) for s in seeds]
    return [d["image"] for d in data], [d["semantic"] for d in data]


def test_unet_learns_nuclei_in_150_steps():
    """From random weights, 150 steps of 4 crops of 128 px (what about 40 s of a quiet 2-core CPU gave;
    in steps, so a busy machine is slower, not failing); foreground Dice on 3 unseen images must reach 0.85.

    An untrained or broken model scores near 0.25 (the nuclei cover about 20 % of the image).
    """
    images, labels = _nuclei(range(6))
    test_images, test_labels = _nuclei(range(100, 103))
    model = new_model("unet", label_values=[0, 1])
    result = drive(train(model, images, labels, TrainConfig(epochs=6, steps_per_epoch=25, patch_size=128, seed=0)))
    assert result.stopped in ("epochs", "early stopping")
    cm = sum(
        semantic.confusion(drive(predict(result.model, im, output="classes")), lab, 2)
        for im, lab in zip(test_images, test_labels)
    )
    dice = semantic.metrics_from_confusion(cm)["dice"]
    assert dice >= 0.85, dice


def test_cancel_returns_a_loadable_best_model(tmp_path):
    images, labels = _nuclei([0, 1])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    steps = []

    def cancel():
        return len(steps) >= 3  # cancel in the middle of the first epoch

    gen = train(
        model,
        images,
        labels,
        TrainConfig(patch_size=64, steps_per_epoch=20, epochs=5),
        cancel=cancel,
        checkpoint=tmp_path / "ckpt",
    )
    result = drive(gen, lambda p: steps.append(p))
    assert result.stopped == "cancelled"
    assert result.model.card.training["steps"] == 3
    assert result.model.card.metrics["mean_iou"] is not None
    loaded = load_model(tmp_path / "ckpt")  # the checkpoint written during training loads
    assert loaded.card.label_values == [0, 1]


def test_time_budget_stops_training():
    images, labels = _nuclei([0, 1])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    t0 = time.monotonic()
    result = drive(train(model, images, labels, TrainConfig(time_budget=3, epochs=1000, patch_size=64)))
    assert result.stopped == "time budget"
    assert time.monotonic() - t0 < 15


def test_labels_with_unknown_values_are_refused():
    images, labels = _nuclei([0])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    bad = labels[0].copy()
    bad[:3, :3] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        drive(train(model, images, [bad], TrainConfig(epochs=1)))


def test_shape_mismatch_names_the_image():
    images, labels = _nuclei([0])
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    with pytest.raises(ValueError, match="cells.*pick the labels"):
        drive(train(model, images, [labels[0][:100]], TrainConfig(epochs=1), names=["cells"]))


def test_volume_and_small_single_image_train():
    vol = sd.nuclei_3d(seed=0, shape=(12, 48, 48))  # (6 slices of 48 px hold no nucleus: nothing to learn)
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    result = drive(train(model, [vol["image"]], [vol["semantic"]], TrainConfig(epochs=1, steps_per_epoch=2)))
    assert result.model.card.training["samples"] == 12  # one per slice
    single = sd.nuclei_2d(seed=3, shape=(40, 40))
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    result = drive(train(model, [single["image"]], [single["semantic"]], TrainConfig(epochs=1, steps_per_epoch=2)))
    assert np.isfinite(result.history[0]["train_loss"])


def test_elastic_deformation_keeps_image_and_targets_aligned():
    import torch

    from napari_segsuite.augment import elastic

    s = sd.nuclei_2d(seed=0)
    x = torch.from_numpy(s["image"].astype(np.float32) / s["image"].max())[None]
    ids = torch.from_numpy(s["instances"].astype(np.int64))
    xo, yo = elastic(x, torch.stack([ids, (ids > 0).long()]), np.random.default_rng(1))
    assert xo.shape == x.shape and yo.shape == (2, 256, 256) and yo.dtype == torch.int64
    assert not torch.equal(yo[1], (ids > 0).long())  # it did deform
    inside, outside = xo[0][yo[1] == 1].mean(), xo[0][yo[1] == 0].mean()
    assert inside > 3 * outside  # nuclei stayed under their labels
    assert set(yo[0].unique().tolist()) <= set(ids.unique().tolist()) | {-1}  # ids kept (nearest), -1 only outside
    assert (yo[0] == -1).float().mean() < 0.2


def _style_b(img):
    """A second imaging style: another microscope's dim, blurred, noisy nuclei on a bright background.

    (Inverted contrast once stood here; once the weights' average had batch-norm statistics of its own,
    a model from scratch learnt it as fast as one fine-tuned from the bright style: the two share little.)
    """
    from scipy import ndimage as ndi

    f = img.astype(np.float32) / img.max()
    noise = np.random.default_rng(7).normal(0, 0.05, f.shape).astype(np.float32)
    return ndi.gaussian_filter(0.3 * f + 0.5, 2.0) + noise


def _steps_to(history, dice):
    return next((h["step"] for h in history if h["val_dice"] >= dice), float("inf"))


def test_finetuning_adapts_to_a_new_style_faster_than_scratch():
    """A model trained on one style (bright nuclei) fine-tuned on a second (dark, blurred nuclei) reaches
    foreground Dice 0.8 on held-out second-style images in fewer steps than the same model from scratch."""
    from napari_segsuite.model_files import save_model
    from napari_segsuite.store import model_dir

    images_a, labels = _nuclei(range(6))
    parent = model_for_training("unet", images_a, labels)
    parent = drive(train(parent, images_a, labels, TrainConfig(epochs=1, steps_per_epoch=120, patch_size=128))).model
    save_model(parent, model_dir() / "style-a")
    images_b = [_style_b(i) for i in images_a]
    cfg = TrainConfig(epochs=10, steps_per_epoch=5, patch_size=128, patience=0, seed=1)
    tuned = drive(train(model_for_training("style-a", images_b, labels), images_b, labels, cfg))
    scratch = drive(train(model_for_training("unet", images_b, labels), images_b, labels, cfg))
    s_tuned, s_scratch = _steps_to(tuned.history, 0.8), _steps_to(scratch.history, 0.8)
    assert s_tuned < s_scratch, (
        s_tuned,
        s_scratch,
        [round(h["val_dice"], 2) for h in scratch.history],
        [round(h["val_dice"], 2) for h in tuned.history],
        tuned.model.card.comparison,
    )
    assert tuned.model.card.comparison["metric"] == "mean IoU"  # and the parent was scored on the same images


@pytest.mark.parametrize("arch", ["unet", "fpn"])
def test_freeze_encoder_trains_only_the_rest(arch):
    import torch

    from napari_segsuite.models.base import encoder_of

    images, labels = _nuclei(range(2))
    model = new_model(arch, label_values=[0, 1])
    enc = encoder_of(model.module)
    assert enc is not None
    before = {n: t.detach().clone() for n, t in model.module.named_parameters()}
    enc_names = {n for n, p in model.module.named_parameters() if any(p is q for q in enc.parameters())}
    drive(train(model, images, labels, TrainConfig(epochs=1, steps_per_epoch=3, patch_size=64, freeze_encoder=True)))
    after = dict(model.module.named_parameters())
    assert enc_names and all(torch.equal(before[n], after[n]) for n in enc_names)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in enc_names)
    assert all(p.requires_grad for p in model.module.parameters())  # unfrozen again afterwards


def test_progress_total_follows_the_time_budget_when_it_binds_first():
    """With 1000 epochs but a 4 s budget, the reported total (the bar, the time left) is the steps that
    fit in the budget, not the epoch limit's."""
    from napari_segsuite import sample_data as sd
    from napari_segsuite.progress import Progress

    data = [sd.nuclei_2d(seed=i, shape=(64, 64)) for i in range(2)]
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    reports: list[Progress] = []
    gen = train(
        model,
        [d["image"] for d in data],
        [d["semantic"] for d in data],
        TrainConfig(epochs=1000, steps_per_epoch=10, time_budget=4, patch_size=64),
    )
    result = drive(gen, reports.append)
    steps = result.model.card.training["steps"]
    assert result.stopped == "time budget" and steps < 10_000
    last = reports[-1]
    assert last.total <= 2 * steps + 10, (last.total, steps)  # the epoch limit would say 10000


def test_no_early_stop_before_anything_was_learnt():
    """An instance model that has found no object yet (AP50 0) keeps training: a score of 0 is where
    every object model starts, not a plateau."""
    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    model = model_for_training("unet-instance", [s["image"]], [s["instances"]], base_filters=4, depth=2)
    cfg = TrainConfig(epochs=4, steps_per_epoch=1, patience=1, lr=1e-9, patch_size=64, batch_size=2, calibrate=False)
    result = drive(train(model, [s["image"]], [s["instances"]], cfg))
    assert result.model.card.metrics["score"] == 0.0
    assert result.stopped == "epochs" and len(result.history) == 4


def test_early_stopping_waits_for_half_the_time_budget_or_not_at_all(monkeypatch):
    """A validation score that never improves (a model finding only the background can hold the best
    score for many epochs before it learns a rare class): with epochs alone training stops after
    `patience` epochs; under a time budget it goes on until half the budget has passed, and without a
    `patience` it goes on to the end of the budget."""
    from napari_segsuite import training

    monkeypatch.setattr(training, "VAL_SHARE", 1.0)  # validate after every epoch
    monkeypatch.setattr(training, "evaluate_samples", lambda *a, **k: {"score": 0.5, "loss": 1.0})
    images, labels = _nuclei([0, 1])
    cfg = {
        "epochs": 5,
        "steps_per_epoch": 1,
        "patch_size": 64,
        "batch_size": 2,
        "patience": 1,
        "calibrate": False,
        "prefetch": False,
    }
    by_epochs = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, TrainConfig(**cfg)))
    assert by_epochs.stopped == "early stopping" and len(by_epochs.history) == 2
    budgeted = TrainConfig(**cfg, time_budget=3600)
    by_time = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, budgeted))
    assert by_time.stopped == "epochs" and len(by_time.history) == 5
    # no patience given: 20 epochs without a budget, none under one
    cfg.update(epochs=22, patience=None)
    default = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, TrainConfig(**cfg)))
    assert default.stopped == "early stopping" and len(default.history) == 21
    monkeypatch.setattr(training, "EARLY_STOP_AFTER", 0.0)  # a patience given would stop it now
    budgeted = TrainConfig(**cfg, time_budget=3600)
    by_time = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, budgeted))
    assert by_time.stopped == "epochs" and len(by_time.history) == 22


def test_validated_on_the_training_image_the_latest_model_is_kept(monkeypatch):
    """With a held-out part the best-scoring model is kept; where nothing could be held out (one small
    image, scored on itself) the latest: a choice by the score on the training image favours the
    states that fit it best."""
    import torch

    from napari_segsuite import training

    monkeypatch.setattr(training, "VAL_SHARE", 1.0)  # validate after every epoch
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2] * 2)  # with a held-out part the latest weights are scored last
    seen = []

    def fake(model, *a, **k):
        seen.append({n: t.detach().clone() for n, t in model.module.state_dict().items()})
        return {"score": next(scores), "loss": 1.0}

    monkeypatch.setattr(training, "evaluate_samples", fake)
    cfg = {"epochs": 4, "steps_per_epoch": 1, "patch_size": 32, "batch_size": 2, "calibrate": False, "lr": 0.01}
    cfg["prefetch"] = False
    for shape, first in (((96, 96), True), ((24, 24), False)):
        lab = np.zeros(shape, np.uint8)
        lab[4:12, 4:12] = lab[shape[0] // 2 :, shape[1] // 2 :] = 1  # objects in every part
        images, labels = [lab * 0.8 + np.random.default_rng(0).normal(0, 0.1, shape).astype(np.float32)], [lab]
        seen.clear()
        result = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, TrainConfig(**cfg)))
        held = not result.model.card.training["validation"].startswith("none held out")
        assert held is first, result.model.card.training["validation"]
        kept = seen[0] if first else seen[-1]
        for n, t in result.model.module.state_dict().items():
            assert torch.equal(t.cpu(), kept[n]), n
        assert result.model.card.training["best_epoch"] == (1 if first else 4)


@pytest.mark.parametrize("latest_score", [0.8, 0.1])
def test_the_latest_weights_are_kept_where_they_validate_better_than_the_average(monkeypatch, latest_score):
    """Training validates the weights' average; once at the end it also scores the latest weights on
    the same images and keeps them where they do better (a run that still learns fast when its time is
    up: the average of its second half lags behind), the average where not. The card says which."""
    import torch

    from napari_segsuite import training

    monkeypatch.setattr(training, "VAL_SHARE", 1.0)  # validate after every epoch
    seen = []

    def fake(model, *a, **k):
        seen.append({n: t.detach().clone() for n, t in model.module.state_dict().items()})
        return {"score": 0.3 if len(seen) <= 3 else latest_score, "loss": 1.0}

    monkeypatch.setattr(training, "evaluate_samples", fake)
    images, labels = _nuclei([0, 1])
    cfg = TrainConfig(epochs=3, steps_per_epoch=2, patch_size=64, batch_size=2, calibrate=False, prefetch=False)
    result = drive(train(new_model("unet", label_values=[0, 1], depth=2), images, labels, cfg))
    assert len(seen) == 4  # three validations of the average, then the latest weights once
    better = latest_score > 0.3
    assert result.model.card.training["weights"] == {
        "kept": "latest" if better else "average",
        "average": 0.3,
        "latest": latest_score,
    }
    assert result.model.card.metrics["score"] == (latest_score if better else 0.3)
    kept = seen[3] if better else seen[2]
    assert any(not torch.equal(seen[2][n], seen[3][n]) for n in seen[2])  # the two differ
    for n, t in result.model.module.state_dict().items():
        assert torch.equal(t.cpu(), kept[n]), n
