"""Outputs that would replace the user's files or not fit their format are refused with a message."""

import numpy as np
import pytest

from napari_segsuite.cli import main
from napari_segsuite.io import read_labels, write_labels


def test_demo_refuses_to_replace_files_in_its_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "screenshot.png").write_bytes(b"my own picture")
    assert main(["demo", "--headless", "--out", str(out)]) == 2
    said = capsys.readouterr().out
    assert "screenshot.png exists" in said and "--overwrite" in said
    assert (out / "screenshot.png").read_bytes() == b"my own picture"
    assert sorted(p.name for p in out.iterdir()) == ["screenshot.png"]  # nothing else written either


def test_png_labels_with_more_than_16_bits_are_refused(tmp_path):
    many = np.arange(70_000, dtype=np.int32).reshape(280, 250)  # 69999 objects: ids beyond 65535
    with pytest.raises(ValueError, match=r"a\.png: a PNG holds label values 0\.\.65535.*69999 objects.*a\.tif"):
        write_labels(tmp_path / "a.png", many)
    assert list(tmp_path.iterdir()) == []  # no PNG with wrapped ids, no TIFF under another name
    with pytest.raises(ValueError, match="negative values"):
        write_labels(tmp_path / "b.png", np.array([[0, -1]], np.int32))
    ok = np.array([[0, 65535], [7, 1]], np.int64)
    path = write_labels(tmp_path / "c.png", ok)
    assert path.name == "c.png" and read_labels(path).max() == 65535
    np.testing.assert_array_equal(read_labels(write_labels(tmp_path / "d.tif", many)), many)  # TIFF holds them
