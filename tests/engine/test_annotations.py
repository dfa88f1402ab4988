"""Polygons of labelme and COCO (CVAT) JSON files as instance label images."""

import json

import numpy as np
import pytest

from napari_segsuite import cli
from napari_segsuite.annotations import read_polygons
from napari_segsuite.io import match_pairs, read_labels, write_labels


def _labelme(path, h=20, w=30):
    shapes = [
        {"label": "cell", "shape_type": "polygon", "points": [[2, 2], [8, 2], [8, 8], [2, 8]]},
        {"label": "cell", "shape_type": "rectangle", "points": [[20, 10], [12, 4]]},
        {"label": "cell", "shape_type": "circle", "points": [[24, 14], [24, 17]]},
        {"label": "tip", "shape_type": "point", "points": [[1, 1]]},
    ]
    path.write_text(json.dumps({"shapes": shapes, "imageHeight": h, "imageWidth": w, "imagePath": "a.png"}))


def test_labelme_shapes_become_objects(tmp_path):
    _labelme(tmp_path / "a.json")
    ids = read_polygons(tmp_path / "a.json")
    assert ids.shape == (20, 30) and ids.dtype == np.int32 and set(np.unique(ids)) == {0, 1, 2, 3}
    assert (ids[2:9, 2:9] == 1).all() and ids[0:2].max() == 0  # the polygon, outline included
    assert (ids[4:11, 12:21] >= 2).all() and ids[14, 24] == 3  # rectangle; the circle paints over it


def test_coco_polygons_and_rle_per_image(tmp_path):
    rle = np.zeros((10, 12), bool)
    rle[6:9, 1:4] = True
    flat = rle.T.ravel()  # COCO runs go down the columns, starting with a run of 0s
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, flat.astype(int), -1]) != 0)).tolist()
    coco = {
        "images": [{"id": 1, "file_name": "x/a.png", "height": 10, "width": 12}, {"id": 2, "file_name": "b.png", "height": 5, "width": 5}],
        "annotations": [
            {"image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]], "iscrowd": 0},
            {"image_id": 2, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0},
            {"image_id": 1, "segmentation": {"counts": runs, "size": [10, 12]}, "iscrowd": 0},
            {"image_id": 1, "segmentation": [[8, 0, 11, 0, 11, 9]], "iscrowd": 1},  # crowd: left out
        ],
    }  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    a = read_polygons(tmp_path / "coco.json", image="a.tif")  # by name without extension
    assert a.shape == (10, 12) and set(np.unique(a)) == {0, 1, 2}
    assert (a[1:5, 1:6] == 1).all() and (a[rle] == 2).all() and a[:, 8:].max() == 0
    assert read_polygons(tmp_path / "coco.json", image="b.png").shape == (5, 5)
    with pytest.raises(ValueError, match="no annotations for image 'c.png'"):
        read_polygons(tmp_path / "coco.json", image="c.png")
    with pytest.raises(ValueError, match="say which image"):
        read_polygons(tmp_path / "coco.json")
    # the CLI's --labels / --instances take the COCO file for a folder of images
    (tmp_path / "img").mkdir()
    for name, shape in (("a.png", (10, 12)), ("b.png", (5, 5))):
        write_labels(tmp_path / "img" / name, np.zeros(shape, np.uint8))
    _, labels, names, _ = cli._load_pairs(str(tmp_path / "img"), str(tmp_path / "coco.json"))
    assert names == ["a.png", "b.png"] and [lab.shape for lab in labels] == [(10, 12), (5, 5)]
    np.testing.assert_array_equal(cli._load_instances(str(tmp_path / "img"), str(tmp_path / "coco.json"))[0], a)
    write_labels(tmp_path / "img" / "c.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="c.png"):
        match_pairs(tmp_path / "img", tmp_path / "coco.json")


def test_labelme_json_beside_its_image(tmp_path):
    """labelme saves a.json beside a.png: the JSON is the labels, never the image itself."""
    write_labels(tmp_path / "a.png", np.zeros((20, 30), np.uint8))
    _labelme(tmp_path / "a.json")
    [(img, lab)] = match_pairs(tmp_path, tmp_path)
    assert (img.name, lab.name) == ("a.png", "a.json") and read_labels(lab).max() == 3
    write_labels(tmp_path / "b.png", np.zeros((20, 30), np.uint8))  # not annotated yet
    with pytest.raises(FileNotFoundError, match="b.png"):
        match_pairs(tmp_path, tmp_path)


def test_not_polygons_is_one_clear_message(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="neither a labelme file"):
        read_labels(tmp_path / "x.json")
