"""The installed package carries the manifest and the built-in model, in a wheel as in the editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates_with_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segsuite")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment", "Fine-tune", "Annotate"}
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei2d", "nuclei3d", "scene_rgb"}
    manifest.validate_imports()


def test_wheel_carries_manifest_and_builtin_model(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = zipfile.ZipFile(next(tmp_path.glob("*.whl")))
    names = set(wheel.namelist())
    assert wheel.read("napari_segsuite/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
    assert {
        "napari_segsuite/builtin/nuclei-unet/model.json",
        "napari_segsuite/builtin/nuclei-unet/model.safetensors",
    } <= names
    assert "napari.manifest" in wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
