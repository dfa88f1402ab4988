"""``segsuite segment`` on zarr and OME-Zarr: block by block to zarr, into the NGFF labels group,
collisions refused, --resume."""

import json

import numpy as np
import pytest
import zarr

from napari_segsuite.cli import main
from napari_segsuite.inference import segment
from napari_segsuite.model_files import save_model
from napari_segsuite.progress import drive

from ._helpers import semantic_model


@pytest.fixture
def model_dir(tmp_path):
    m = semantic_model()
    save_model(m, tmp_path / "model")
    return tmp_path / "model"


def test_zarr_to_zarr_equals_in_memory_and_refuses_to_overwrite(tmp_path, model_dir, capsys):
    img = (np.random.default_rng(0).random((260, 230)) * 255).astype(np.uint8)
    zarr.create_array(tmp_path / "in.zarr", data=img, chunks=(64, 64))
    args = [
        "segment",
        "--model",
        str(model_dir),
        "--input",
        str(tmp_path / "in.zarr"),
        "--device",
        "cpu",
        "--tile",
        "64",
    ]
    assert main([*args, "--output", str(tmp_path / "out.zarr"), "--block-size", "100"]) == 0
    from napari_segsuite.model_files import load_model

    ref = drive(segment(load_model(model_dir), img, tile=64, device="cpu")).semantic
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "out.zarr")[:], ref)
    assert main([*args, "--output", str(tmp_path / "out.zarr")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "in.zarr")]) == 2  # never onto the input
    assert "replace the input" in capsys.readouterr().err


def test_ome_zarr_labels_group_per_ngff(tmp_path, model_dir):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    img = (np.random.default_rng(1).random((1, 120, 140)) * 255).astype(np.uint8)
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    write_image(img, root, axes="cyx", scale_factors=(2,), scale={"y": 0.5, "x": 0.5})
    args = ["segment", "--model", str(model_dir), "--input", str(tmp_path / "img.ome.zarr"), "--device", "cpu"]
    args += ["--tile", "64", "--output", str(tmp_path / "img.ome.zarr"), "--block-size", "64", "--label-name", "cells"]
    assert main(args) == 0
    assert main(args) == 2  # labels/cells exists: refused without --overwrite
    assert main([*args, "--overwrite"]) == 0
    nodes = list(Reader(parse_url(str(tmp_path / "img.ome.zarr")))())
    assert any(type(s).__name__ == "Label" for n in nodes for s in n.specs), "ome-zarr does not see the labels"
    meta = json.loads((tmp_path / "img.ome.zarr" / "labels" / "cells" / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["image-label"]["source"]["image"] == "../../"
    assert meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    lab = zarr.open_array(tmp_path / "img.ome.zarr" / "labels" / "cells" / "0")
    assert lab.shape == (1, 120, 140) and lab[:].any()
    image_meta = json.loads((tmp_path / "img.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    level0 = image_meta["multiscales"][0]["datasets"][0]["path"]
    assert zarr.open_array(tmp_path / "img.ome.zarr" / level0)[:].tobytes() == img.tobytes()  # the image untouched


def test_resume_continues_zarr_blocks_and_skips_finished_files(tmp_path, model_dir, capsys):
    import tifffile

    img = (np.random.default_rng(2).random((200, 200)) * 255).astype(np.uint8)
    zarr.create_array(tmp_path / "in.zarr", data=img, chunks=(64, 64))
    out = tmp_path / "out.zarr"
    base = ["segment", "--model", str(model_dir), "--device", "cpu", "--tile", "64", "--block-size", "100"]
    assert main([*base, "--input", str(tmp_path / "in.zarr"), "--output", str(out)]) == 0
    first = zarr.open_array(out)[:]
    arr = zarr.open_array(out, mode="r+")
    arr[:20, :20] = 7  # as if killed: block (0, 0) unrecorded, its pixels wrong
    done = arr.attrs["segsuite"]["done_blocks"]
    arr.attrs.update({"segsuite": {**arr.attrs["segsuite"], "done_blocks": [d for d in done if d != [0, 0]]}})
    arr[-5:, -5:] = 9  # a recorded block is not run again
    assert main([*base, "--input", str(tmp_path / "in.zarr"), "--output", str(out), "--resume"]) == 0
    again = zarr.open_array(out)[:]
    np.testing.assert_array_equal(again[:20, :20], first[:20, :20])
    assert (again[-5:, -5:] == 9).all()

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        tifffile.imwrite(tmp_path / "imgs" / f"a{i}.tif", img[:64, :64])
    folder = ["--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "labels")]
    assert main([*base, *folder]) == 0
    (tmp_path / "labels" / "a1.tif").unlink()
    capsys.readouterr()
    assert main([*base, *folder, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 of 2 images done already" in captured.err and "a1.tif" in captured.out and "a0.tif" not in captured.out
