import json

import numpy as np
import pytest

from napari_segsuite import cli
from napari_segsuite import sample_data as sd
from napari_segsuite.io import read_image, write_labels


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_unet(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    entries = json.loads(out)
    unet = next(e for e in entries if e["name"] == "unet")
    assert unet["task"] == "semantic" and unet["description"]


def test_sample_writes_all_kinds(tmp_path, capsys):
    code, _, _ = run(capsys, "sample", "--out", str(tmp_path), "--n", "2")
    assert code == 0
    assert len(list((tmp_path / "nuclei2d" / "images").glob("*.tif"))) == 2
    vol = read_image(next((tmp_path / "nuclei3d" / "images").glob("*.tif")))
    assert vol.ndim == 3
    rgb = read_image(next((tmp_path / "scene_rgb" / "images").glob("*.tif")))
    assert rgb.shape[-1] == 3


def test_train_segment_evaluate_with_0_255_masks(tmp_path, capsys):
    """Masks of 0/255 train a 2-class model; segment writes 0/255 back; evaluate prints the JSON keys."""
    for d in ("img", "lab", "test_img", "test_lab"):
        (tmp_path / d).mkdir()
    for i in range(4):
        s = sd.nuclei_2d(seed=i, shape=(128, 128))
        folder = ("img", "lab") if i < 3 else ("test_img", "test_lab")
        write_labels(tmp_path / folder[0] / f"n{i}.tif", s["image"])
        write_labels(tmp_path / folder[1] / f"n{i}_mask.png", s["semantic"] * 255)
    model = tmp_path / "my model"
    code, out, err = run(
        capsys,
        "train",
        "--model",
        "unet",
        "--images",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(model),
        "--epochs",
        "3",
        "--patch-size",
        "64",
    )
    assert code == 0, err
    assert (model / "model.safetensors").is_file()
    assert json.loads((model / "model.json").read_text())["label_values"] == [0, 255]

    code, out, err = run(
        capsys,
        "segment",
        "--model",
        str(model),
        "--input",
        str(tmp_path / "test_img"),
        "--output",
        str(tmp_path / "pred"),
    )
    assert code == 0, err
    pred = read_image(tmp_path / "pred" / "n3.tif")
    assert pred.shape == (128, 128) and set(np.unique(pred)) <= {0, 255}

    code, out, err = run(
        capsys,
        "evaluate",
        "--model",
        str(model),
        "--images",
        str(tmp_path / "test_img"),
        "--labels",
        str(tmp_path / "test_lab"),
        "--json",
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert {"mean_iou", "dice", "pixel_accuracy", "iou_per_class"} <= set(metrics)
    assert len(metrics["iou_per_class"]) == 2
    assert (
        metrics["mean_iou"] > 0.5
    )  # 30 steps on 3 images (in steps: a busy machine is slower, not failing): well above chance

    # the same path fine-tunes the saved model
    code, out, err = run(
        capsys,
        "train",
        "--model",
        str(model),
        "--images",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(tmp_path / "tuned"),
        "--epochs",
        "1",
    )
    assert code == 0, err
    card = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert card["parent"]["name"] == "my model"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["segment", "--model", "unet", "--input", ".", "--output", "x"], "untrained architecture"),
        (["segment", "--model", "nope", "--input", ".", "--output", "x"], "No trained model"),
        (["train", "--model", "nope", "--images", ".", "--labels", ".", "--out", "x"], "No images found"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_instance_model_train_segment_evaluate(tmp_path, capsys):
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for i in range(3):
        s = sd.nuclei_2d(seed=i, shape=(96, 96))
        write_labels(tmp_path / "img" / f"n{i}.tif", s["image"])
        write_labels(tmp_path / "lab" / f"n{i}.tif", s["instances"].astype(np.uint16))
    code, out, err = run(
        capsys,
        "train",
        "--model",
        "unet-instance",
        "--images",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(tmp_path / "inst"),
        "--epochs",
        "2",
        "--patch-size",
        "64",
    )
    assert code == 0, err
    code, out, err = run(
        capsys,
        "segment",
        "--model",
        str(tmp_path / "inst"),
        "--input",
        str(tmp_path / "img" / "n0.tif"),
        "--output",
        str(tmp_path / "pred"),
    )
    assert code == 0, err
    ids = read_image(tmp_path / "pred" / "n0.tif")
    assert ids.shape == (96, 96) and np.issubdtype(ids.dtype, np.integer)
    code, out, err = run(
        capsys,
        "evaluate",
        "--model",
        str(tmp_path / "inst"),
        "--images",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--json",
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert {"ap50", "ap50_95", "f1", "mean_matched_iou"} <= set(metrics)
    assert 0.0 <= metrics["ap50_95"] <= metrics["ap50"] <= 1.0


def test_panoptic_and_object_classes_through_the_cli(tmp_path, capsys):
    """Panoptic: classes in --labels, objects in --instances, --things; segment writes both images and the
    objects table; evaluate --json has pq, sq, rq and pq_per_class by label value."""
    for d in ("img", "sem", "inst", "out"):
        (tmp_path / d).mkdir()
    for i in range(2):
        s = sd.panoptic_scene(seed=i, shape=(64, 64))
        write_labels(tmp_path / "img" / f"s{i}.tif", s["image"])
        write_labels(tmp_path / "sem" / f"s{i}.tif", s["semantic"])
        write_labels(tmp_path / "inst" / f"s{i}.tif", s["instances"])
    common = ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "sem")]
    code, out, err = run(
        capsys,
        "train",
        "--model",
        "panoptic-deeplab",
        *common,
        "--instances",
        str(tmp_path / "inst"),
        "--things",
        "2,3",
        "--epochs",
        "1",
        "--patch-size",
        "64",
        "--out",
        str(tmp_path / "pan"),
    )
    assert code == 0, err
    assert "PQ" in out
    code, out, err = run(
        capsys,
        "segment",
        "--model",
        str(tmp_path / "pan"),
        "--input",
        str(tmp_path / "img"),
        "--output",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    assert (tmp_path / "out" / "s0.tif").is_file() and (tmp_path / "out" / "s0_instances.tif").is_file()
    assert (tmp_path / "out" / "s0_objects.csv").read_text().startswith("index,class,score")
    code, out, err = run(
        capsys, "evaluate", "--model", str(tmp_path / "pan"), *common, "--instances", str(tmp_path / "inst"), "--json"
    )
    assert code == 0, err
    m = json.loads(out)
    assert {"pq", "sq", "rq", "pq_per_class", "pq_things", "pq_stuff"} <= set(m)
    assert set(m["pq_per_class"]) <= {"0", "1", "2", "3"}
    code, _, err = run(
        capsys, "train", "--model", "panoptic-deeplab", *common, "--things", "9", "--out", str(tmp_path / "bad")
    )
    assert code == 2 and "do not occur" in err


def _tiny_model(tmp_path):
    from napari_segsuite.model_files import new_model, save_model

    return save_model(new_model("unet", label_values=[0, 1], depth=2, base_filters=4), tmp_path / "tiny")


def test_segment_never_replaces_the_input_images(tmp_path, capsys):
    """The data-loss bug: `segment --input imgs --output imgs` replaced the images with their labels."""
    imgs = tmp_path / "imgs"
    for name in ("a", "b"):
        write_labels(imgs / f"{name}.tif", sd.nuclei_2d(seed=0, shape=(64, 64))["image"])
    before = {f.name: f.read_bytes() for f in imgs.iterdir()}
    code, _, err = run(
        capsys, "segment", "--model", str(_tiny_model(tmp_path)), "--input", str(imgs), "--output", str(imgs)
    )
    assert code == 2 and "would replace the input image" in err
    assert {f.name: f.read_bytes() for f in imgs.iterdir()} == before  # untouched, nothing added
    code, _, err = run(
        capsys, "segment", "--model", str(tmp_path / "tiny"), "--input", str(imgs), "--output", str(imgs), "--overwrite"
    )
    assert code == 2 and "would replace the input image" in err  # not even with --overwrite
    assert {f.name: f.read_bytes() for f in imgs.iterdir()} == before


def test_segment_refuses_existing_outputs_and_a_file_as_output_folder(tmp_path, capsys):
    write_labels(tmp_path / "in" / "a.tif", sd.nuclei_2d(seed=0, shape=(64, 64))["image"])
    model = str(_tiny_model(tmp_path))
    write_labels(tmp_path / "out" / "a.tif", np.ones((4, 4), np.uint8))
    code, _, err = run(
        capsys, "segment", "--model", model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")
    )
    assert code == 2 and "exists already" in err and "--overwrite" in err
    assert read_image(tmp_path / "out" / "a.tif").shape == (4, 4)
    code, _, err = run(
        capsys,
        "segment",
        "--model",
        model,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--overwrite",
    )
    assert code == 0, err and read_image(tmp_path / "out" / "a.tif").shape == (64, 64)
    code, _, err = run(
        capsys, "segment", "--model", model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "a.tif")
    )
    assert code == 2 and "is an existing file" in err


def test_train_refuses_to_replace_a_trained_model_without_overwrite(tmp_path, capsys):
    for i in range(2):
        s = sd.nuclei_2d(seed=i, shape=(64, 64))
        write_labels(tmp_path / "img" / f"n{i}.tif", s["image"])
        write_labels(tmp_path / "lab" / f"n{i}.png", s["semantic"])
    model = _tiny_model(tmp_path)
    before = (model / "model.safetensors").read_bytes()
    args = [
        "train",
        "--model",
        "unet",
        "--images",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(model),
        "--epochs",
        "1",
        "--patch-size",
        "64",
        "--arg",
        "depth=2",
    ]
    code, _, err = run(capsys, *args)
    assert code == 2 and "holds a trained model already" in err and "--overwrite" in err
    assert (model / "model.safetensors").read_bytes() == before
    code, _, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert (model / "model.safetensors").read_bytes() != before


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_models", interrupted)
    code, _, err = run(capsys, "models")
    assert code == 130 and err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("all-zero labels", [], "Nothing to learn"),
        ("one class", [], "Nothing to learn"),
        ("no finite value", [], "no finite value"),
        ("negative epochs", ["--epochs", "-1"], "epochs must be at least 1"),
        ("zero time budget", ["--time-budget", "0"], "time budget must be more than 0"),
    ],
)
def test_training_that_cannot_mean_anything_is_refused_and_writes_nothing(tmp_path, capsys, case, extra, message):
    for i in range(2):
        s = sd.nuclei_2d(seed=i, shape=(64, 64))
        image = np.full((64, 64), np.nan, np.float32) if case == "no finite value" else s["image"]
        labels = {"all-zero labels": np.zeros((64, 64), np.uint8), "one class": np.full((64, 64), 3, np.uint8)}.get(
            case, s["semantic"]
        )
        np.save(tmp_path / f"n{i}.npy", image) if case == "no finite value" else write_labels(
            tmp_path / "img" / f"n{i}.tif", image
        )
        write_labels(tmp_path / "lab" / f"n{i}.png", labels)
    images = tmp_path if case == "no finite value" else tmp_path / "img"
    code, _, err = run(
        capsys,
        "train",
        "--model",
        "unet",
        "--images",
        str(images),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(tmp_path / "m"),
        "--patch-size",
        "64",
        "--epochs",
        "1",
        *extra,
    )
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


def test_nifti_volumes_train_segment_evaluate(tmp_path, capsys):
    """Folders of .nii.gz scans and labels (case1 <-> labels/case1_seg.nii.gz): the card keeps the
    voxel size and the ignore value; segment writes NAME_labels.nii.gz on the scan's affine."""
    import nibabel as nib

    affine = np.array([[-0.5, 0, 0, 5], [0, 0.5, 0, -2], [0, 0, 1.2, 1], [0, 0, 0, 1.0]])  # voxel axes L, A, S
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    for i in range(2):
        v = sd.nuclei_3d(seed=i, shape=(4, 40, 40), n=5)
        ijk = np.ascontiguousarray(v["image"].transpose(2, 1, 0)[::-1])  # (Z, Y, X) -> (L, A, S) voxels
        nib.save(nib.Nifti1Image(ijk, affine), tmp_path / "img" / f"case{i}.nii.gz")
        seg = v["semantic"].astype(np.uint8)
        seg[:, :2] = 255  # a 'void' border, as VOC-style exports have
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(seg.transpose(2, 1, 0)[::-1]), affine),
            tmp_path / "lab" / f"case{i}_seg.nii.gz",
        )
    common = ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")]
    code, _, err = run(
        capsys, "train", "--model", "unet", *common, "--out", str(tmp_path / "m"), "--epochs", "1",
        "--patch-size", "32", "--batch-size", "2", "--arg", "depth=2", "--arg", "base_filters=4", "--ignore-value", "255",
    )  # fmt: skip
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["voxel_size"] == [1.2, 0.5, 0.5] and card["ignore_value"] == 255 and card["label_values"] == [0, 1]
    assert card["mirror_axes"] is None  # nuclei and background look different: every mirroring, scan or not
    code, out, err = run(
        capsys,
        "segment",
        "--model",
        str(tmp_path / "m"),
        "--input",
        str(tmp_path / "img"),
        "--output",
        str(tmp_path / "p"),
    )
    assert code == 0, err
    scan, lab = nib.load(tmp_path / "img" / "case0.nii.gz"), nib.load(tmp_path / "p" / "case0_labels.nii.gz")
    assert lab.shape == scan.shape and np.allclose(lab.affine, scan.affine)
    assert read_image(tmp_path / "p" / "case0_labels.nii.gz").shape == (4, 40, 40)  # (Z, Y, X), as the scan reads
    code, out, err = run(capsys, "evaluate", "--model", str(tmp_path / "m"), *common, "--json")
    assert code == 0, err and "mean_iou" in json.loads(out)
    code, _, err = run(capsys, "train", "--model", "unet", *common, "--out", str(tmp_path / "x"), "--voxel-size", "1,1")
    assert code == 2 and "give Z,Y,X" in err
