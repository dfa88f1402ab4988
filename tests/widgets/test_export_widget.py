"""The Segment dock's Export (ONNX, TorchScript, bioimage.io in a worker) and Save ROIs, and worker errors
reported once."""

import numpy as np
import pytest


def _wait(qtbot, controls, timeout=120_000):
    qtbot.waitUntil(lambda: controls.worker is None, timeout=timeout)


@pytest.fixture
def seg_dock(make_napari_viewer):
    from napari_segsuite.model_files import new_model, save_model
    from napari_segsuite.store import model_dir

    save_model(new_model("unet", label_values=[0, 1], base_filters=4, depth=2), model_dir() / "cells")
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    seg.model.value = next(v for v in seg.model.choices if v.endswith("cells"))
    return viewer, seg


def test_export_onnx_in_a_worker_and_refusal_of_object_models(seg_dock, qtbot, tmp_path, monkeypatch):
    viewer, seg = seg_dock
    worker = seg.export_selected(tmp_path / "cells.onnx", "onnx")
    assert worker is not None
    _wait(qtbot, seg.controls)
    assert (tmp_path / "cells.onnx").stat().st_size > 1000
    assert "onnx" in seg.controls.status.value and "difference from PyTorch" in seg.controls.status.value

    from napari_segsuite.model_files import new_model, save_model
    from napari_segsuite.store import model_dir
    from napari_segsuite.widgets import _common

    shown = []
    monkeypatch.setattr(_common, "show_error", shown.append)
    save_model(new_model("maskrcnn", label_values=[0, 1]), model_dir() / "objects")
    seg.model.reset_choices()
    seg.model.value = next(v for v in seg.model.choices if v.endswith("objects"))
    assert seg.export_selected(tmp_path / "o.onnx", "onnx") is None
    assert len(shown) == 1 and ".segsuite.zip" in shown[0] and not (tmp_path / "o.onnx").exists()


def test_save_rois_of_the_selected_labels_layer(seg_dock, qtbot, tmp_path):
    import roifile

    viewer, seg = seg_dock
    labels = np.zeros((3, 40, 40), np.int32)
    labels[0, 5:10, 5:10] = 1
    labels[1, 20:30, 20:30] = 2
    viewer.add_labels(labels, name="objects")
    seg.save_rois(tmp_path / "objects_rois.zip")
    _wait(qtbot, seg.controls)
    rois = roifile.roiread(tmp_path / "objects_rois.zip")
    assert [(r.name, r.position) for r in rois] == [("object 1 z1", 1), ("object 2 z2", 2)]
    assert "Saved ROIs" in seg.controls.status.value


def test_worker_error_reported_once(seg_dock, qtbot, monkeypatch):
    """A failing run shows one notification, not also napari's relay and a re-raise in the main thread."""
    from napari.utils.notifications import notification_manager

    from napari_segsuite.widgets import _common

    viewer, seg = seg_dock
    shown, relayed = [], []
    monkeypatch.setattr(_common, "show_error", shown.append)
    monkeypatch.setattr(notification_manager, "receive_error", lambda *a, **k: relayed.append(a))

    def failing():
        yield from ()
        raise ValueError("the model file went away")

    seg.controls.launch(failing, on_yield=lambda p: None, on_done=lambda r: None)
    _wait(qtbot, seg.controls)
    assert shown == ["the model file went away"] and relayed == []
    assert seg.controls.status.value == "Error: the model file went away"
