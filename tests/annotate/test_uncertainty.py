"""Correct this next (annotate/uncertainty.py): the deliberately ambiguous image and tile come first."""

import numpy as np
import torch
from torch import nn

from napari_segsuite.annotate.uncertainty import pixel_uncertainty, rank_images
from napari_segsuite.model_files import SegModel, new_model
from napari_segsuite.progress import drive


def _threshold_model():
    """A 'model' that says foreground above mid-grey: sure at 0 and 1, a coin toss at 0.5."""
    card = new_model("unet", label_values=[0, 1], depth=1, base_filters=2).card
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1)
        conv.bias[:] = torch.tensor([5.0, -5.0])
    return SegModel(conv, card)


def _image(grey_at=None):
    img = np.zeros((256, 256), np.float32)
    img[20:60, 20:60] = 1.0  # a clear object
    img[200:240, 30:70] = 1.0
    if grey_at is not None:
        y, x = grey_at
        img[y : y + 40, x : x + 40] = 0.5  # an ambiguous one
    return img


def test_pixel_uncertainty_entropy_and_margin():
    p = np.array([[0.5, 1.0, 0.9], [0.5, 0.0, 0.1]], np.float32)
    for how in ("entropy", "margin"):
        u = pixel_uncertainty(p, how)
        assert u[0] > 0.99 and u[1] < 0.01 and u[1] < u[2] < u[0]


def test_the_ambiguous_image_and_its_ambiguous_tile_come_first():
    model = _threshold_model()
    images = [_image(), _image(grey_at=(150, 170)), _image()]
    ranking = drive(rank_images(model, images))
    assert [i for i, _ in ranking][0] == 1
    top = ranking[0][1]
    assert top.score > 10 * ranking[1][1].score
    ys, xs = top.tile
    assert ys.start <= 170 < ys.stop and xs.start <= 190 < xs.stop and top.tile_score > 0.05
    # a volume: the slice that holds it
    vol = np.stack([_image(), _image(grey_at=(10, 150)), _image()])
    ((_, u),) = drive(rank_images(model, [vol]))
    assert u.tile[0] == slice(1, 2) and u.tile[1].start <= 30 < u.tile[1].stop


def test_segment_next_takes_the_most_uncertain_image_and_object_models_keep_the_order():
    from napari_segsuite.annotate.uncertainty import segment_most_uncertain
    from napari_segsuite.models.base import ObjectModel

    model = _threshold_model()
    images = [_image(), _image(grey_at=(100, 100))]
    pick, seg, ranking = drive(segment_most_uncertain(model, images, [None, None]))
    assert pick == 1 and [i for i, _ in ranking] == [1, 0] and seg.semantic.shape == (256, 256)
    pick, _, ranking = drive(segment_most_uncertain(model, images[:1], [None]))  # one image: nothing to rank
    assert pick == 0 and ranking is None

    class Objects(ObjectModel):  # no maps to score
        def forward(self, x):
            raise AssertionError("not called")

    assert drive(rank_images(SegModel(Objects(), model.card), images)) is None
