import json

import numpy as np
import pytest
import torch

from napari_segsuite.io import match_pairs, read_image, read_labels, write_labels
from napari_segsuite.model_files import load_model, new_model, save_model


def test_model_round_trip_gives_identical_output(tmp_path):
    model = new_model("unet", label_values=[0, 255], depth=2, base_filters=4)
    model.module.eval()
    x = torch.randn(1, 1, 40, 40)
    path = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    card = json.loads((path / "model.json").read_text())
    assert card["label_values"] == [0, 255] and card["architecture"] == "unet"
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model.module(x))
    # either file inside the folder names the model too
    assert load_model(path / "model.json").card.num_classes == 2


def test_save_replaces_existing_model_completely(tmp_path):
    a = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    b = new_model("unet", label_values=[0, 1, 2], depth=2, base_filters=4)
    save_model(a, tmp_path / "m")
    save_model(b, tmp_path / "m")
    assert load_model(tmp_path / "m").card.num_classes == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left behind


def test_load_missing_model_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)


def test_unknown_builder_argument_is_explained():
    with pytest.raises(ValueError, match="does not take encoder_name"):
        new_model("unet", label_values=[0, 1], encoder_name="resnet34")


def test_match_pairs_by_name_with_suffixes(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ["a1.tif", "a2.tif", "a10.tif"]:
        write_labels(tmp_path / "img" / name, np.zeros((4, 4), np.uint8))
    for name in ["a1_mask.png", "a2.tif", "a10_labels.tif"]:
        write_labels(tmp_path / "lab" / name, np.ones((4, 4), np.uint8))
    pairs = match_pairs(tmp_path / "img", tmp_path / "lab")
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("a1.tif", "a1_mask.png"),
        ("a2.tif", "a2.tif"),
        ("a10.tif", "a10_labels.tif"),
    ]
    (tmp_path / "lab" / "a2.tif").unlink()
    with pytest.raises(FileNotFoundError, match="a2.tif"):
        match_pairs(tmp_path / "img", tmp_path / "lab")


def test_write_labels_keeps_values_and_3d(tmp_path):
    vol = np.random.default_rng(0).integers(0, 300, (3, 8, 8)).astype(np.uint16)
    p = write_labels(tmp_path / "v.png", vol)  # 3D cannot be PNG: written as TIFF
    assert p.suffix == ".tif"
    np.testing.assert_array_equal(read_image(p), vol)


def test_save_never_replaces_a_folder_that_is_not_a_model(tmp_path):
    data = tmp_path / "my data"
    data.mkdir()
    (data / "cells.tif").write_bytes(b"precious")
    with pytest.raises(ValueError, match="not a saved model"):
        save_model(new_model("unet", label_values=[0, 1], depth=2, base_filters=4), data)
    assert (data / "cells.tif").read_bytes() == b"precious"


def test_read_labels_palette_grey_rgb_and_singletons(tmp_path):
    from PIL import Image

    lab = np.zeros((8, 8), np.uint8)
    lab[2:5, 2:5] = 3
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "pal.png"), lab)  # indices, not colours
    Image.fromarray(np.repeat(lab[..., None] * 80, 3, axis=2)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "grey_rgb.png"), lab * 80)
    np.save(tmp_path / "stack.npy", lab[None])
    assert read_labels(tmp_path / "stack.npy").shape == (8, 8)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = lab
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="one channel"):
        read_labels(tmp_path / "colour.png")
