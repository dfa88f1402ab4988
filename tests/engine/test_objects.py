"""Object models (Mask R-CNN, SOLO, DeepMask) and panoptic models through the engine: stitching,
volumes, training, saving, features."""

import numpy as np
import pytest
import torch

from napari_segsuite import sample_data as sd
from napari_segsuite.inference import segment
from napari_segsuite.model_files import load_model, save_model
from napari_segsuite.models import available
from napari_segsuite.models.base import ObjectModel
from napari_segsuite.progress import drive
from napari_segsuite.tasks import instance
from napari_segsuite.tiling import core_bounds, predict_objects, tile_starts
from napari_segsuite.training import TrainConfig, train
from napari_segsuite.workflows import evaluate, model_for_training


class Oracle(ObjectModel):
    """Detects the objects coded in its input (channel 0 = object id): a perfect model, so any
    difference between tiled and whole results is the stitching's."""

    max_object_size = 40

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def detect(self, x, score_threshold=0.5):
        out = []
        for img in x[:, 0].round().long():
            ids = [int(i) for i in img.unique() if i > 0]
            masks = torch.stack([img == i for i in ids]) if ids else torch.zeros((0, *img.shape), dtype=torch.bool)
            out.append(
                {
                    "masks": masks,
                    "scores": torch.linspace(1, 0.6, len(ids)),
                    "classes": torch.ones(len(ids), dtype=torch.long),
                }
            )
        return out


def test_core_bounds_partition_the_axis():
    starts = tile_starts(300, 128, 96)
    bounds = core_bounds(starts, 128)
    assert bounds[0][0] == -np.inf and bounds[-1][1] == np.inf
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # no gap, no overlap
    for s, (lo, hi) in zip(starts, bounds):  # each share lies inside its own tile
        assert s <= max(lo, 0) and min(hi, 300) <= s + 128


def test_tiled_objects_match_the_untiled_result():
    gt = sd.nuclei_2d(seed=4, shape=(300, 260))["instances"]
    x = gt.astype(np.float32)[None]
    whole, _ = drive(predict_objects(Oracle(), x, tile=512, min_size=1))
    tiled, feats = drive(predict_objects(Oracle(), x, tile=96, overlap=0.25, min_size=1))
    n = len(np.unique(gt)) - 1
    assert whole.max() == tiled.max() == n  # none lost, none counted twice at tile borders
    assert instance.metrics(tiled, gt)["ap50_95"] == 1.0  # and each object whole
    assert list(feats["index"]) == list(range(1, n + 1)) and (feats["class"] == 1).all()


def test_overlapping_detections_resolved_by_score():
    a = np.zeros((2, 20, 20), bool)
    a[0, 2:12, 2:12] = True
    a[1, 4:12, 4:12] = True  # a duplicate of the first, lower score: dropped
    objs = instance.objects_from_masks(a, np.array([0.9, 0.8]))
    labels, feats = instance.paste(objs, (20, 20))
    assert labels.max() == 1 and (labels > 0).sum() == 100 and feats["score"].tolist() == [pytest.approx(0.9)]


OBJECT_MODELS = [s.name for s in available("instance") if s.objects]


@pytest.mark.parametrize("name", OBJECT_MODELS)
def test_object_model_trains_saves_and_segments_images_and_volumes(name, tmp_path):
    data = [sd.nuclei_2d(seed=i, shape=(96, 96)) for i in range(2)]
    images, ids = [d["image"] for d in data], [d["instances"] for d in data]
    classes = [np.where(d["instances"] % 2 == 1, 1, 2) * (d["instances"] > 0) for d in data]  # two classes
    model = model_for_training(name, images, classes, instances=ids)
    assert model.card.label_values == [0, 1, 2]
    res = drive(train(model, images, classes, TrainConfig(epochs=2, steps_per_epoch=2, patch_size=64), instances=ids))
    assert "val_ap50" in res.history[-1] and res.model.card.metrics["score"] == res.model.card.metrics["ap50"]
    save_model(res.model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    seg = drive(segment(loaded, images[0], device="cpu"))
    assert seg.semantic is None and seg.instances.shape == (96, 96) and seg.instances.dtype == np.int32
    assert set(seg.features) == {"index", "class", "score"}
    assert set(seg.features["class"].tolist()) <= {1, 2}  # the user's label values
    vol = drive(segment(loaded, np.stack([images[0]] * 3), device="cpu"))
    assert vol.instances.shape == (3, 96, 96)
    assert len(vol.features["index"]) == len(np.unique(vol.instances)) - 1


def test_panoptic_model_trains_and_segments_through_the_engine(tmp_path):
    scenes = [sd.panoptic_scene(seed=i, shape=(96, 96)) for i in range(2)]
    images, sem = [s["image"] for s in scenes], [s["semantic"] for s in scenes]
    # no instance images: each connected region of a thing class is one object
    model = model_for_training("panoptic-deeplab", images, sem, things=[2, 3])
    assert model.card.thing_classes == [2, 3]
    res = drive(train(model, images, sem, TrainConfig(epochs=2, steps_per_epoch=2, patch_size=64)))
    assert {"val_pq", "val_sq", "val_rq"} <= set(res.history[-1])
    save_model(res.model, tmp_path / "p")
    loaded = load_model(tmp_path / "p")
    seg = drive(segment(loaded, images[0], device="cpu", tile=64))
    assert seg.semantic.shape == seg.instances.shape == (96, 96)
    assert set(np.unique(seg.semantic).tolist()) <= {0, 1, 2, 3}
    m = drive(evaluate(loaded, images, sem, instances=[s["instances"] for s in scenes], device="cpu"))
    assert {"pq", "sq", "rq", "pq_per_class", "pq_things", "pq_stuff"} <= set(m)
    assert set(m["pq_per_class"]) <= {0, 1, 2, 3}


def test_things_must_be_classes_of_the_labels():
    s = sd.panoptic_scene(seed=0, shape=(64, 64))
    with pytest.raises(ValueError, match="do not occur"):
        model_for_training("panoptic-deeplab", [s["image"]], [s["semantic"]], things=[7])


def test_one_class_instance_models_refuse_class_labels():
    s = sd.nuclei_2d(seed=0, shape=(64, 64))
    with pytest.raises(ValueError, match="object model"):
        model_for_training("unet-instance", [s["image"]], [s["semantic"]], instances=[s["instances"]])


def test_segment_at_needs_a_pointable_model_and_returns_a_mask():
    from napari_segsuite.inference import segment_at
    from napari_segsuite.model_files import new_model

    s = sd.nuclei_2d(seed=0, shape=(96, 96))
    with pytest.raises(ValueError, match="click"):
        segment_at(new_model("unet", label_values=[0, 1]), s["image"], (10, 10))
    dm = new_model("deepmask", label_values=[0, 1])
    mask, score = segment_at(dm, s["image"], (40, 50), device="cpu")
    assert mask.shape == (96, 96) and mask.dtype == bool and 0.0 <= score <= 1.0
    vol = np.stack([s["image"]] * 3)
    mask3, _ = segment_at(dm, vol, (1, 40, 50), device="cpu")
    assert mask3.shape == (3, 96, 96) and not mask3[0].any() and not mask3[2].any()
