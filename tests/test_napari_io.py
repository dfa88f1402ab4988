"""napari's reader, writer and menu contributions (called as napari calls them; no viewer needed)."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import tifffile

from napari_segsuite import cli
from napari_segsuite.io_formats import voxel_size_for
from napari_segsuite.napari_io import get_reader, write_labels_layer

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.array([[0, 0, -1.2, 5], [0, 0.5, 0, -2], [0.5, 0, 0, 1], [0, 0, 0, 1.0]])  # voxel axes S, A, L


def test_manifest_contributes_reader_writer_and_segment_menu():
    from npe2 import PluginManifest

    m = PluginManifest.from_file(ROOT / "src" / "napari_segsuite" / "napari.yaml")
    assert {"*.nii", "*.nii.gz", "*.ome.tif"} <= set(m.contributions.readers[0].filename_patterns)
    writer = m.contributions.writers[0]
    assert writer.layer_types == ["labels"] and {".tif", ".nii", ".nii.gz"} <= set(writer.filename_extensions)
    assert [c.command for c in m.contributions.menus["napari/layers/segment"]] == [
        "napari-segsuite.open_segment_widget",
        "napari-segsuite.open_finetune_widget",
        "napari-segsuite.open_annotate_widget",
    ]
    commands = {c.id: c.python_name for c in m.contributions.commands}
    assert commands[m.contributions.readers[0].command] == "napari_segsuite.napari_io:get_reader"


def test_nifti_opens_with_scale_and_saved_labels_overlay_the_scan(tmp_path):
    scan = np.random.default_rng(0).normal(size=(5, 8, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(scan, AFFINE), tmp_path / "brain.nii.gz")
    reader = get_reader(str(tmp_path / "brain.nii.gz"))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(tmp_path / "brain.nii.gz"))
    assert kind == "image" and data.shape == (5, 8, 6) and kwargs["scale"] == (0.5, 0.5, 1.2)
    assert kwargs["name"] == "brain" and kwargs["metadata"]["segsuite_source"]["affine"] is not None
    # a Labels layer carrying the scan's geometry (as the Segment widget copies it) saves onto the scan's grid
    labels = (data > 0).astype(np.uint8)
    features = pd.DataFrame({"index": [1], "class": [1], "score": [0.9]})
    meta = {"scale": kwargs["scale"], "metadata": kwargs["metadata"], "features": features}
    written = write_labels_layer(str(tmp_path / "brain_seg.nii.gz"), labels, meta)
    assert [Path(p).name for p in written] == ["brain_seg.nii.gz", "brain_seg_objects.csv"]
    back = nib.load(written[0])
    assert back.shape == scan.shape and np.allclose(back.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(back.dataobj), (scan > 0).astype(np.uint8))
    assert Path(written[1]).read_text().startswith("index,class,score")
    # a file named like labels opens as a Labels layer
    [(lab, _, kind)] = get_reader(written[0])(written[0])
    assert kind == "labels" and np.issubdtype(lab.dtype, np.integer)
    # without a source: TIFF with the layer's scale as the pixel size
    [tif] = write_labels_layer(str(tmp_path / "plain"), labels, {"scale": (2.0, 0.5, 0.5), "features": pd.DataFrame()})
    assert tif.endswith("plain.tif")
    from napari_segsuite.io import read_image_info

    assert read_image_info(tif).voxel_size == (2.0, 0.5, 0.5)


def test_ome_tiff_sizes_to_layer_scale_and_training_voxel_size(tmp_path):
    """OME-TIFF physical sizes -> layer scale; and -> the voxel size `segsuite train` puts in the card."""
    vol = np.zeros((3, 16, 16), np.uint16)
    meta = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.3}
    for d in ("img", "lab"):
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.ome.tif", vol, ome=True, metadata=meta)
    tifffile.imwrite(tmp_path / "lab" / "a_mask.tif", vol.astype(np.uint8))
    [(_, kwargs, kind)] = get_reader(str(tmp_path / "img" / "a.ome.tif"))(str(tmp_path / "img" / "a.ome.tif"))
    assert kind == "image" and kwargs["scale"] == (2.0, 0.3, 0.3)
    _, _, names, sizes = cli._load_pairs(str(tmp_path / "img"), str(tmp_path / "lab"))
    assert names == ["a.ome.tif"] and voxel_size_for(None, sizes, names, volume=True) == (2.0, 0.3, 0.3)
    assert voxel_size_for("4,1,1", sizes, names, volume=True) == (4.0, 1.0, 1.0)  # the flag wins


def test_reader_declines_what_it_does_not_read(tmp_path, monkeypatch):
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.png")]) is None
    monkeypatch.setitem(sys.modules, "bioio", None)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert get_reader(str(tmp_path / "a.czi")) is None  # without bioio another plugin may read it
