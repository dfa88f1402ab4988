"""The reliability catalogue against the CLI: every bad input is one line on stderr naming the file and
the fix, exit code 2 (1 for what the program could not do), no traceback, nothing written, inputs untouched."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

from napari_segsuite import cli
from napari_segsuite import sample_data as sd
from napari_segsuite.io import write_labels
from napari_segsuite.model_files import new_model, save_model


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(tmp_path):
    return save_model(new_model("unet", label_values=[0, 1], depth=2, base_filters=4), tmp_path / "tiny")


def _image(seed=0, shape=(32, 32)):
    return sd.nuclei_2d(seed=seed, shape=shape)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _segment_case(case, d, model):
    """Inputs for one bad-input case of ``segment``: (the --input, the --model, extra args, needle)."""
    img = d / "in"
    img.mkdir()
    if case == "text named .tif":
        (img / "a.tif").write_text("not an image")
        return img, model, [], "Cannot read 'a.tif'"
    if case == "truncated PNG":
        write_labels(img / "a.png", (_image()["image"] * 200).astype(np.uint8))
        _truncate(img / "a.png")
        return img, model, [], "Cannot read 'a.png'"
    if case == "truncated TIFF in the middle of a folder":  # the good one before it is not written either
        write_labels(img / "a.tif", _image()["image"])
        write_labels(img / "b.tif", _image(1, (64, 64))["image"])
        _truncate(img / "b.tif")
        return img, model, [], "Cannot read 'b.tif'"
    if case == "all-NaN image after a good one":
        write_labels(img / "a.tif", _image()["image"])
        np.save(img / "b.npy", np.full((16, 16), np.nan, np.float32))
        return img, model, [], "'b.npy' holds no finite value"
    if case == "4D image":
        np.save(img / "a.npy", np.zeros((2, 3, 16, 16), np.float32))
        return img, model, [], "'a.npy' of shape (2, 3, 16, 16) is not supported"
    if case == "two channels":
        np.save(img / "a.npy", np.zeros((16, 16, 2), np.float32))
        return img, model, [], "'a.npy' of shape (16, 16, 2) has 2 values per pixel"
    if case == "not an image file":
        (img / "notes.txt").write_text("hello")
        return img / "notes.txt", model, [], "'notes.txt' is not a file of a kind"
    write_labels(img / "a.tif", _image()["image"])
    if case == "tile 0":
        return img, model, ["--tile", "0"], "--tile"
    if case == "output inside a file":
        return img, model, ["--output", img / "a.tif" / "out"], "which is a file, not a folder"
    if case == "a folder where the output goes":
        (d / "res" / "a.tif").mkdir(parents=True)
        return img, model, ["--output", d / "res", "--overwrite"], "is a folder where a result file would go"
    if case == "unknown device":
        return img, model, ["--device", "gpu"], "Unknown device 'gpu'"
    if case == "a GPU this machine lacks":
        return img, model, ["--device", "cuda:99"], "'cuda:99' is not available here"
    if case == "missing weights":
        (model / "model.safetensors").unlink()
        return img, model, [], "No saved model"
    if case == "truncated weights":
        _truncate(model / "model.safetensors")
        return img, model, [], "model.safetensors' are damaged"
    if case == "card not JSON":
        (model / "model.json").write_text("{not json")
        return img, model, [], "not a readable model card"
    card = json.loads((model / "model.json").read_text())
    change = {
        "card claims 3D": {"spatial_dims": 3},
        "card normalisation not a number": {"normalization": {"kind": "percentile", "low": "abc", "high": 99}},
        "card asks for a huge network": {"build": {"base_filters": 100_000, "depth": 2}},
        "card negative depth": {"build": {"base_filters": 4, "depth": -1}},
    }[case]
    (model / "model.json").write_text(json.dumps({**card, **change}))
    return img, model, [], f"field '{next(iter(change))}'"


@pytest.mark.parametrize(
    "case",
    [
        "text named .tif",
        "truncated PNG",
        "truncated TIFF in the middle of a folder",
        "all-NaN image after a good one",
        "4D image",
        "two channels",
        "not an image file",
        "tile 0",
        "output inside a file",
        "a folder where the output goes",
        "unknown device",
        "a GPU this machine lacks",
        "missing weights",
        "truncated weights",
        "card not JSON",
        "card claims 3D",
        "card normalisation not a number",
        "card asks for a huge network",
        "card negative depth",
    ],
)
def test_segment_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, capsys, tiny, case):
    inp, model, extra, needle = _segment_case(case, tmp_path, tiny)
    before = _snapshot(tmp_path)
    code, _, err = run(capsys, "segment", "--model", model, "--input", inp, "--output", tmp_path / "out", *extra)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and _snapshot(tmp_path) == before


def _train_case(case, d):
    img, lab = d / "img", d / "lab"
    for i in range(2):
        s = _image(i)
        write_labels(img / f"n{i}.tif", s["image"])
        labels = s["semantic"].astype(np.float32)
        if case == "fractional labels" and i == 1:
            labels = labels + 0.5
        if case == "NaN in labels" and i == 1:
            labels[0, 0] = np.nan
        if case == "labels of another shape" and i == 1:
            labels = labels[:20]
        if case != "fewer labels than images" or i == 0:
            import tifffile

            lab.mkdir(exist_ok=True)
            tifffile.imwrite(lab / f"n{i}.tif", labels)
    return img, lab


@pytest.mark.parametrize(
    "case, extra, needle",
    [
        ("fractional labels", [], "'n1.tif' holds fractional values"),
        ("NaN in labels", [], "'n1.tif' holds NaN"),
        ("labels of another shape", [], "Labels of 'n1.tif' are 20x32"),
        ("fewer labels than images", [], "n1.tif"),
        ("negative patch size", ["--patch-size", "-5"], "crop size must be at least 8"),
        ("huge patch size", ["--patch-size", "100000"], "crop size must be at most"),
        ("batch size 0", ["--batch-size", "0"], "batch size must be at least 1"),
        ("negative learning rate", ["--lr", "-1"], "learning rate must be a number more than 0"),
        ("infinite learning rate", ["--lr", "inf"], "learning rate must be a number more than 0"),
        ("negative patience", ["--patience", "-1"], "patience must be 0"),
        ("negative seed", ["--seed", "-1"], "seed must be 0 or more"),
        ("path in an encoder name", ["--model", "pspnet", "--encoder", "tu-hf-hub:someone/x"], "never paths"),
        ("negative depth", ["--arg", "depth=-1"], "'unet' cannot be built with"),  # was an IndexError
        ("a huge network", ["--arg", "base_filters=100000"], "parameters, more than"),  # would exhaust memory
        ("out inside a file", ["--out", "IMG/n0.tif/model"], "which is a file, not a folder"),  # failed after an epoch
    ],
)
def test_train_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, capsys, case, extra, needle):
    img, lab = _train_case(case, tmp_path)
    before = _snapshot(tmp_path)
    argv = ["train", "--model", "unet", "--images", img, "--labels", lab, "--out", tmp_path / "m", "--epochs", "1"]
    code, _, err = run(capsys, *argv, *[a.replace("IMG", str(img)) for a in extra])
    assert code == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "m").exists() and _snapshot(tmp_path) == before


def test_evaluate_names_the_label_file_and_refuses_tile_0(tmp_path, capsys, tiny):
    img, lab = _train_case("labels of another shape", tmp_path)
    code, _, err = run(capsys, "evaluate", "--model", tiny, "--images", img, "--labels", lab)
    assert code == 2 and "Labels of 'n1.tif' are 20x32" in err, err
    code, _, err = run(capsys, "evaluate", "--model", tiny, "--images", img, "--labels", lab, "--tile", "-3")
    assert code == 2 and "--tile" in err, err


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, capsys, tiny):
    """a.jpg and a.tif both give a.tif: the second used to replace the first silently."""
    import imageio.v3 as iio

    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.jpg", (_image()["image"] * 200).astype(np.uint8))
    write_labels(tmp_path / "in" / "a.tif", _image(1)["image"])
    code, _, err = run(capsys, "segment", "--model", tiny, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2 and "would both be written to" in err, err
    assert "a.jpg" in err and "a.tif" in err and not (tmp_path / "out").exists()


def test_semantic_model_writes_no_object_files_so_those_names_do_not_clash(tmp_path, capsys, tiny):
    for name in ("a", "a_instances"):
        write_labels(tmp_path / "in" / f"{name}.tif", _image()["image"])
    code, _, err = run(capsys, "segment", "--model", tiny, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "a_instances.tif"]


def test_an_output_hard_linked_to_an_input_is_the_input(tmp_path, capsys, tiny):
    """Compared with os.path.samefile, not by name: a hard link (or, on macOS and Windows, another
    spelling of the name) of an input is refused even with --overwrite."""
    write_labels(tmp_path / "in" / "a.tif", _image()["image"])
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "a.tif", tmp_path / "out" / "a.tif")
    before = _snapshot(tmp_path)
    argv = ["segment", "--model", tiny, "--input", tmp_path / "in", "--output", tmp_path / "out", "--overwrite"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "would replace the input image" in err, err
    assert _snapshot(tmp_path) == before


def test_models_export_never_replaces_a_file_without_overwrite(tmp_path, capsys, tiny):
    dest = tmp_path / "m.segsuite.zip"
    dest.write_text("precious")
    code, _, err = run(capsys, "models", "--export", tiny, dest)
    assert code == 2 and "exists already" in err and "--overwrite" in err, err
    assert dest.read_text() == "precious"
    code, _, err = run(capsys, "models", "--export", tiny, tiny / "model.safetensors", "--overwrite")
    assert code == 2 and "model's own folder" in err, err
    code, out, err = run(capsys, "models", "--export", tiny, dest, "--overwrite")
    assert code == 0, err
    assert dest.read_bytes()[:2] == b"PK"


def test_sample_never_replaces_files_without_overwrite(tmp_path, capsys):
    mine = tmp_path / "nuclei2d" / "images" / "nuclei2d_000.tif"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    code, _, err = run(capsys, "sample", "--out", tmp_path, "--n", "1")
    assert code == 2 and "exists already" in err and "--overwrite" in err, err
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.rglob("*.tif")) == ["nuclei2d_000.tif"]
    code, _, err = run(capsys, "sample", "--out", tmp_path / "new", "--n", "0")
    assert code == 2 and "--n must be at least 1" in err


def test_colour_image_for_a_grey_model_says_what_happens_and_what_to_do(tmp_path, capsys, caplog, tiny):
    import imageio.v3 as iio

    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="napari_segsuite"):
        code, _, err = run(capsys, "segment", "--model", tiny, "--input", tmp_path / "in", "--output", tmp_path / "o")
    assert code == 0, err
    assert "segmented in grey" in caplog.text and "train a model on colour images" in caplog.text


def test_an_unexpected_error_is_one_line_without_verbose(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_models", broken)
    code, _, err = run(capsys, "models")
    assert code == 1 and err.count("\n") == 1 and "internal error: ZeroDivisionError" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["-v", "models"])


def test_a_permission_error_is_one_line(tmp_path, capsys, tiny, monkeypatch):
    write_labels(tmp_path / "in" / "a.tif", _image()["image"])

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "a.tif"))

    monkeypatch.setattr("napari_segsuite.io.write_labels", denied)
    code, _, err = run(capsys, "segment", "--model", tiny, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2 and "Permission denied" in err and "a.tif" in err and "Traceback" not in err
    shutil.rmtree(tmp_path / "in")
