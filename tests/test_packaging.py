"""The installed package carries the manifest and the built-in model, in a wheel as in the editable install."""

import os
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
    assert wheel.read("napari_segsuite/napari.yaml") == (ROOT / "src" / "napari_segsuite" / "napari.yaml").read_bytes()
    top = ROOT / "napari.yaml"  # one manifest, inside the package; the top level's only points at it
    assert not top.exists() or (
        top.is_symlink() and top.resolve() == (ROOT / "src" / "napari_segsuite" / "napari.yaml").resolve()
    )
    meta = wheel.read(next(n for n in names if n.endswith("METADATA"))).decode()
    version = next(line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Version: "))
    assert version[0].isdigit() and version != "0.0.0"  # from the git tag, or setuptools_scm's fallback
    assert "Classifier: Framework :: napari" in meta and "Project-URL: Source" in meta
    assert "Requires-Dist: scipy" in meta
    assert {
        "napari_segsuite/builtin/nuclei-unet/model.json",
        "napari_segsuite/builtin/nuclei-unet/model.safetensors",
    } <= names
    assert "napari.manifest" in wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_without_qt_runs_the_cli():
    """The built wheel, installed into a new virtual environment with no Qt binding, imports the engine and
    runs ``segsuite --help`` (scripts/check_wheel.sh; minutes: it installs napari's dependencies)."""
    if not (ROOT / "scripts" / "check_wheel.sh").is_file():
        pytest.skip("not a source checkout")
    env = {**os.environ, "PYTHON": sys.executable}  # the interpreter running the tests builds the wheel
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "check_wheel: ok" in done.stdout
