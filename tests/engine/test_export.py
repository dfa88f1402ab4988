"""Models out of the plugin and back: ONNX, TorchScript and bioimage.io packages checked against PyTorch,
a package of ours imported and fine-tuned, and ImageJ ROI sets of instance results."""

import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_segsuite import sample_data as sd
from napari_segsuite.cli import main
from napari_segsuite.export import check_exportable, export, forward, normalized, sample_image
from napari_segsuite.io import read_labels, write_labels
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.rois import label_rois, write_rois

SAMPLE = sd.nuclei_2d(seed=3, shape=(64, 80))["image"]


@pytest.fixture
def small_unet():
    torch.manual_seed(0)
    m = new_model("unet", label_values=[0, 1], class_names=["background", "nucleus"], base_filters=4, depth=2)
    for p in m.module.parameters():  # random but not tiny weights, so the outputs differ from pixel to pixel
        p.data.normal_(0, 0.3)
    return m


def test_onnx_matches_pytorch_on_a_sample(small_unet, tmp_path):
    import onnxruntime as ort

    r = export(small_unet, "onnx", tmp_path / "m.onnx", sample=SAMPLE)
    assert r.max_diff["onnx"] <= 1e-4
    x = normalized(small_unet, sample_image(small_unet, SAMPLE))
    assert x.shape == (1, 1, 64, 80)
    big = np.ascontiguousarray(np.tile(x, (2, 1, 2, 3)))  # another batch and size than exported with
    got = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).run(None, {"input": big})[0]
    want = forward(small_unet, big)
    assert got.shape == (2, 2, 128, 240)
    assert np.abs(got - want).max() <= 1e-4 and want.std() > 0.01
    with pytest.raises(ValueError, match="exists already"):
        export(small_unet, "onnx", r.path, sample=SAMPLE)


def test_torchscript_matches_pytorch(small_unet, tmp_path):
    r = export(small_unet, "torchscript", tmp_path / "m.pt", sample=SAMPLE)
    ts = torch.jit.load(str(r.path))
    x = torch.from_numpy(normalized(small_unet, sample_image(small_unet, SAMPLE)))
    with torch.no_grad():
        assert torch.allclose(ts(x), small_unet.module(x), atol=1e-4)


def test_object_models_are_refused_naming_the_format_that_works():
    mrcnn = SimpleNamespace(name="cells", card=SimpleNamespace(architecture="maskrcnn"))
    with pytest.raises(ValueError, match=r"list of objects.*\.segsuite\.zip"):
        check_exportable(mrcnn, "onnx")
    with pytest.raises(ValueError, match="Unknown export format"):
        check_exportable(mrcnn, "tflite")


def _package(model, out, **kw):
    pytest.importorskip("bioimageio.spec")
    return export(model, "bioimageio", out, sample=SAMPLE, authors=["Test Author"], **kw)


def test_bioimageio_package_validates_and_carries_our_model(small_unet, tmp_path):
    """Fast sibling of the full test: the spec's validator accepts the package (no model test run); the rdf
    holds the card's normalisation, three weight formats, test tensors, a cover; ONNX matches PyTorch."""
    import yaml

    r = _package(small_unet, tmp_path / "pkg", run_test=False)
    assert r.max_diff["onnx"] <= 1e-4 and r.max_diff["torchscript"] <= 1e-4
    rdf = yaml.safe_load((r.path / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["import_from"] == "napari_segsuite.export_bioimageio"
    assert arch["kwargs"]["build"] == {"base_filters": 4, "depth": 2}
    pre = rdf["inputs"][0]["preprocessing"]
    scale = next(p for p in pre if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"], scale["axes"]) == (1.0, 99.8, ["y", "x"])
    assert rdf["authors"] == [{"name": "Test Author"}] and rdf["cite"] and rdf["license"] == "CC-BY-4.0"
    assert {"model.json", "model.safetensors"} <= {a["source"] for a in rdf["attachments"]}
    assert (r.path / rdf["covers"][0]["source"]).stat().st_size > 1000
    raw = np.load(r.path / rdf["inputs"][0]["test_tensor"]["source"])
    out = np.load(r.path / rdf["outputs"][0]["test_tensor"]["source"])
    assert np.abs(forward(small_unet, normalized(small_unet, raw)) - out).max() == 0
    card = json.loads((r.path / "model.json").read_text())
    assert card["architecture"] == "unet" and card["class_names"] == ["background", "nucleus"]


@pytest.mark.slow
def test_bioimageio_package_passes_the_libraries_own_test(small_unet, tmp_path):
    """bioimage.io's validator and model test (every weight format, offline, on the CPU) accept the zip."""
    from bioimageio.core import test_model

    r = _package(small_unet, tmp_path / "pkg.zip", run_test=True)  # export runs the test and refuses a failure
    summary = test_model(str(r.path), devices=["cpu"])
    assert summary.status == "passed"
    tested = {d.name for d in summary.details if d.name.startswith("Reproduce test outputs")}
    assert len(tested) == 3  # pytorch_state_dict, torchscript, onnx


def test_package_round_trip_gives_the_same_output_and_fine_tunes(small_unet, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    zipped = export(small_unet, "bioimageio", tmp_path / "pkg.zip", sample=SAMPLE, run_test=False).path
    with zipfile.ZipFile(zipped) as z:
        assert "rdf.yaml" in z.namelist()
    x = normalized(small_unet, sample_image(small_unet, SAMPLE))
    want = forward(small_unet, x)
    from napari_segsuite.export import load_any

    back = load_any(zipped)
    assert np.abs(forward(back, x) - want).max() == 0
    # the zip as --model: one training epoch (a few steps) on two small images fine-tunes it
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for i in range(2):
        s = sd.nuclei_2d(seed=i, shape=(64, 64))
        write_labels(tmp_path / "img" / f"n{i}.tif", s["image"])
        write_labels(tmp_path / "lab" / f"n{i}.tif", s["semantic"])
    args = ["train", "--model", str(zipped), "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")]
    code = main([*args, "--out", str(tmp_path / "tuned"), "--epochs", "1", "--patch-size", "64"])
    assert code == 0, capsys.readouterr().err
    tuned = load_model(tmp_path / "tuned")
    assert tuned.card.parent is not None and tuned.card.build == {"base_filters": 4, "depth": 2}
    assert np.abs(forward(tuned, x) - want).max() > 0  # the weights moved
    # and `segsuite import` adds the package to the store
    assert main(["import", str(zipped), "--name", "from package"]) == 0
    assert "from package" in capsys.readouterr().out


def test_label_rois_one_polygon_per_object_2d_and_3d(tmp_path):
    import roifile

    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:20] = 1
    labels[20:35, 30:45] = 7
    labels[22:25, 2:4] = 7  # a second, smaller piece of object 7: its largest piece is kept
    path = write_rois(tmp_path / "a_rois.zip", labels)
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == ["object 1", "object 7"]
    xy = rois[0].coordinates()  # ImageJ coordinates: the outline runs along the object's pixel edges
    assert np.allclose(xy.min(0), (5, 5)) and np.allclose(xy.max(0), (20, 15))
    vol = np.zeros((3, 20, 20), np.int32)
    vol[0, 2:8, 2:8] = 1
    vol[1, 2:8, 2:8] = 1
    vol[2, 10:15, 10:15] = 2
    rois3 = label_rois(vol)
    assert [(r.name, r.position) for r in rois3] == [("object 1 z1", 1), ("object 1 z2", 2), ("object 2 z3", 3)]
    assert write_rois(tmp_path / "none.zip", np.zeros((4, 4), np.int32)) is None


def test_segment_rois_writes_one_roi_per_object(tmp_path, capsys):
    import roifile

    torch.manual_seed(0)
    m = new_model("unet-instance", label_values=[0, 1, 2], base_filters=4, depth=2)
    save_model(m, tmp_path / "inst")
    (tmp_path / "img").mkdir()
    write_labels(tmp_path / "img" / "n0.tif", sd.nuclei_2d(seed=0, shape=(96, 96))["image"])
    args = ["segment", "--model", str(tmp_path / "inst"), "--input", str(tmp_path / "img")]
    assert main([*args, "--output", str(tmp_path / "out"), "--rois"]) == 0, capsys.readouterr().err
    ids = set(np.unique(read_labels(tmp_path / "out" / "n0.tif")).tolist()) - {0}
    zipped = tmp_path / "out" / "n0_rois.zip"
    if ids:
        assert len(roifile.roiread(zipped)) == len(ids)
    else:
        assert not zipped.exists()
    # a semantic model has no objects: refused before any work
    save_model(new_model("unet", label_values=[0, 1], base_filters=4, depth=2), tmp_path / "sem")
    assert (
        main(["segment", "--model", str(tmp_path / "sem"), *args[3:], "--output", str(tmp_path / "o2"), "--rois"]) == 2
    )
    assert "semantic model" in capsys.readouterr().err
