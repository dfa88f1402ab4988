import numpy as np
import pytest

from napari_segsuite import sample_data as sd
from napari_segsuite.project import Project


def test_project_round_trip(tmp_path):
    s = sd.panoptic_scene(seed=0, shape=(48, 40))
    p = Project(tmp_path / "p")
    a = p.add_pair("scene", s["image"], s["semantic"], s["instances"])
    b = p.add_pair("scene", s["image"], np.zeros_like(s["semantic"]))
    assert (a, b) == ("scene", "scene-2")  # never overwrites a pair
    edited = s["semantic"].copy()
    edited[:5] = 3
    p.save_labels("scene", edited)
    again = Project(tmp_path / "p").pairs()
    assert [q.name for q in again] == ["scene", "scene-2"]
    np.testing.assert_array_equal(again[0].image, s["image"])
    np.testing.assert_array_equal(again[0].labels, edited)
    np.testing.assert_array_equal(again[0].objects, s["instances"])
    assert again[1].objects is None
    p.remove_pair("scene-2")
    assert Project(tmp_path / "p").names() == ["scene"]
    with pytest.raises(KeyError):
        p.save_labels("nope", edited)


def test_project_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "data.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a segsuite project"):
        Project(tmp_path)
