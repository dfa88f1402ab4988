"""Formats users have: NIfTI (orientation, affine round trip), OME/ImageJ TIFF pixel sizes, vendor
formats through the optional bioio, double extensions, and a declared ignore value."""

import sys
import types

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_segsuite.io import (
    full_suffix,
    list_images,
    match_pairs,
    read_image,
    read_image_info,
    read_labels,
    stem_of,
    write_labels,
)
from napari_segsuite.io_formats import common_voxel_size, output_names, parse_voxel_size

#: voxel axes i, j, k run to Left, Inferior, Anterior (not RAS): the reader must reorient
LIA = np.array([[-0.8, 0, 0, 10], [0, 0, 1.5, -3], [0, -0.9, 0, 4], [0, 0, 0, 1.0]])


def _scan(path, shape=(7, 9, 5), affine=LIA, seed=0):
    arr = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return arr


def test_nifti_reads_as_zyx_in_canonical_ras_with_voxel_sizes(tmp_path):
    arr = _scan(tmp_path / "case1.nii.gz")
    info = read_image_info(tmp_path / "case1.nii.gz")
    canonical = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "case1.nii.gz")).dataobj)
    np.testing.assert_array_equal(info.data, canonical.transpose(2, 1, 0))  # (X, Y, Z) RAS -> (Z, Y, X)
    assert info.data.shape == (9, 5, 7) and info.axes == "ZYX"
    assert info.voxel_size == (0.9, 1.5, 0.8) and info.unit == "mm"  # S, A, R steps
    assert info.scale() == (0.9, 1.5, 0.8)
    np.testing.assert_allclose(info.affine, LIA, rtol=1e-6)  # as the header holds it (float32)
    assert arr.shape == (7, 9, 5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_labels_written_back_overlay_the_scan(tmp_path, suffix):
    """NIfTI in -> labels out -> same affine and shape as the scan, voxel for voxel."""
    arr = _scan(tmp_path / f"case1{suffix}")
    info = read_image_info(tmp_path / f"case1{suffix}")
    labels = (info.data > 0.5).astype(np.uint8) + (info.data > 1.5)
    out = write_labels(tmp_path / "out" / f"case1_labels{suffix}", labels, like=info)
    assert out.name == f"case1_labels{suffix}"
    scan, lab = nib.load(tmp_path / f"case1{suffix}"), nib.load(out)
    assert lab.shape == scan.shape and np.allclose(lab.affine, scan.affine)
    assert lab.header.get_sform(coded=True)[1] == scan.header.get_sform(coded=True)[1]
    np.testing.assert_array_equal(np.asarray(lab.dataobj), (arr > 0.5).astype(np.uint8) + (arr > 1.5))
    np.testing.assert_array_equal(read_labels(out), labels)  # read back as the scan is read
    # the image's file as `like` does the same
    again = write_labels(tmp_path / "out" / f"b{suffix}", labels, like=tmp_path / f"case1{suffix}")
    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj), np.asarray(lab.dataobj))
    with pytest.raises(ValueError, match="do not fit"):
        write_labels(tmp_path / "out" / f"c{suffix}", labels[:-1], like=info)


def test_nifti_single_slice_and_no_source(tmp_path):
    _scan(tmp_path / "flat.nii.gz", shape=(7, 9, 1))
    info = read_image_info(tmp_path / "flat.nii.gz")
    assert info.data.shape == (9, 7) and info.voxel_size == (0.9, 0.8)
    out = write_labels(tmp_path / "flat_labels.nii.gz", (info.data > 0).astype(np.uint8), like=info)
    assert nib.load(out).shape == (7, 9, 1)
    plain = write_labels(tmp_path / "plain.nii.gz", np.ones((3, 4, 5), np.int64), voxel_size=(2.0, 1.0, 0.5))
    back = read_image_info(plain)
    assert back.data.shape == (3, 4, 5) and back.voxel_size == (2.0, 1.0, 0.5)
    assert nib.load(plain).get_data_dtype() == np.int32


def test_nifti_pairs_by_name_with_double_extensions(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("case1.nii.gz", "case2.nii.gz", "case10.nii"):
        _scan(tmp_path / "images" / name)
    (tmp_path / "labels").mkdir()
    for name in ("case1.nii.gz", "case2_seg.nii.gz", "case10_labels.nii.gz"):
        write_labels(tmp_path / "labels" / name, np.zeros((3, 4, 5), np.uint8))
    assert [p.name for p in list_images(tmp_path / "images")] == ["case1.nii.gz", "case2.nii.gz", "case10.nii"]
    pairs = match_pairs(tmp_path / "images", tmp_path / "labels")
    assert [(i.name, lab.name) for i, lab in pairs] == [
        ("case1.nii.gz", "case1.nii.gz"),
        ("case2.nii.gz", "case2_seg.nii.gz"),
        ("case10.nii", "case10_labels.nii.gz"),
    ]
    assert (full_suffix("a.b.nii.gz"), stem_of("a.b.nii.gz"), stem_of("x.ome.tif"), full_suffix("y.GZ")) == (
        ".nii.gz",
        "a.b",
        "x",
        ".gz",
    )
    assert [p.name for p in output_names(tmp_path / "case1.nii.gz", tmp_path)] == [
        "case1_labels.nii.gz",
        "case1_instances.nii.gz",
        "case1_objects.csv",
    ]
    assert [p.name for p in output_names("c.ome.tif", ".")] == ["c.ome.tif", "c_instances.tif", "c_objects.csv"]
    assert output_names("c.jpg", ".")[0].name == "c.tif"


def test_ome_and_imagej_tiff_pixel_sizes(tmp_path):
    vol = np.zeros((4, 16, 20), np.uint16)
    meta = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.3}
    tifffile.imwrite(tmp_path / "a.ome.tif", vol, ome=True, metadata=meta)
    info = read_image_info(tmp_path / "a.ome.tif")
    assert info.data.shape == (4, 16, 20) and info.voxel_size == (2.0, 0.25, 0.3) and info.unit == "µm"
    tifffile.imwrite(
        tmp_path / "ij.tif", vol[:, None], imagej=True, resolution=(2.0, 2.0), metadata={"spacing": 3, "unit": "um"}
    )
    assert read_image_info(tmp_path / "ij.tif").voxel_size == (3.0, 0.5, 0.5)
    tifffile.imwrite(tmp_path / "plain.tif", vol[0], imagej=True)  # uncalibrated
    assert read_image_info(tmp_path / "plain.tif").voxel_size is None
    # labels written for it carry the sizes (OME-TIFF), and keep the double extension
    out = write_labels(tmp_path / "out" / "a.ome.tif", vol.astype(np.int32), like=info)
    assert out.name == "a.ome.tif" and read_image_info(out).voxel_size == (2.0, 0.25, 0.3)
    assert read_image_info(write_labels(tmp_path / "n.tif", vol[0])).voxel_size is None


def test_vendor_formats_need_the_extra_and_use_bioio(tmp_path, monkeypatch):
    (tmp_path / "a.czi").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "bioio", None)
    with pytest.raises(ValueError, match=r"napari-segsuite\[formats\]"):
        read_image(tmp_path / "a.czi")

    class FakeBioImage:  # bioio's interface: dims, get_image_data(order, T=0), physical_pixel_sizes
        def __init__(self, path):
            self.dims = types.SimpleNamespace(C=1)
            self.physical_pixel_sizes = types.SimpleNamespace(Z=2.0, Y=0.5, X=0.5)

        def get_image_data(self, order, T=0):
            assert order == "ZYX" and T == 0
            return np.zeros((3, 8, 8), np.uint16)

    monkeypatch.setitem(sys.modules, "bioio", types.SimpleNamespace(BioImage=FakeBioImage))
    info = read_image_info(tmp_path / "a.czi")
    assert info.data.shape == (3, 8, 8) and info.voxel_size == (2.0, 0.5, 0.5)
    assert "a.czi" in [p.name for p in list_images(tmp_path)]


def test_voxel_size_flag_and_agreement(caplog):
    assert parse_voxel_size("2, 0.5,0.5") == (2.0, 0.5, 0.5) and parse_voxel_size(None) is None
    for bad in ("1", "0,1", "a,b", "1,2,3,4"):
        with pytest.raises(ValueError, match="--voxel-size"):
            parse_voxel_size(bad)
    assert common_voxel_size([None, None]) is None
    assert common_voxel_size([(2.0, 0.5, 0.5), None, (2.0, 0.5, 0.5)]) == (2.0, 0.5, 0.5)
    assert not caplog.records
    assert common_voxel_size([(1.0, 0.5, 0.5), (3.0, 0.5, 0.5), (2.0, 0.5, 0.5)], ["a", "b", "c"]) == (2.0, 0.5, 0.5)
    assert "differ" in caplog.text and "a: 1x0.5x0.5" in caplog.text


def test_a_voc_ignore_value_is_no_class_and_no_loss():
    """255 (VOC / labelme 'void') declared ignored: not a class, IGNORE in the targets, out of the metrics."""
    from napari_segsuite.tasks import IGNORE, get_task
    from napari_segsuite.workflows import model_for_training, set_ignore_value

    lab = np.zeros((16, 16), np.uint8)
    lab[4:8, 4:8] = 1
    lab[10:14, 2:6] = 2
    lab[0, :] = 255
    image = np.zeros((16, 16), np.float32)
    plain = model_for_training("unet", [image], [lab], depth=2, base_filters=4)
    assert plain.card.label_values == [0, 1, 2, 255]  # without the declaration 255 is a class (the old way)
    model = model_for_training("unet", [image], [lab], ignore_value=255, depth=2, base_filters=4)
    assert model.card.label_values == [0, 1, 2] and model.card.ignore_value == 255
    t = get_task(model.card.kind).targets(model, lab[None], None, per_slice=True, name="voc")
    assert (t.y[0][0] == IGNORE).all() and (t.y[0][1:] >= 0).all()
    with pytest.raises(ValueError, match="has a class for label value 255"):
        set_ignore_value(plain, 255)
    # instance models: the ignored pixels are no object
    inst = model_for_training("unet-instance", [image], [lab], ignore_value=255, depth=2, base_filters=4)
    t = get_task(inst.card.kind).targets(inst, lab[None], None, per_slice=True, name="voc")
    assert (t.ids[0][0] == IGNORE).all() and (t.y[:, 0, 0] == IGNORE).all() and t.ids.max() == 2
