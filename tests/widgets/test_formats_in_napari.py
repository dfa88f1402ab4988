"""Files through napari: the plugin's reader gives the scale, Segment's result keeps the scan's
geometry for the writer, the Layers > Segment menu, and the plot in the viewer's theme (under Xvfb)."""

import nibabel as nib
import numpy as np

from napari_segsuite.model_files import new_model

AFFINE = np.array([[0, 0, -1.2, 5], [0, 0.5, 0, -2], [0.5, 0, 0, 1], [0, 0, 0, 1.0]])


def test_nifti_open_segment_save_and_theme(make_napari_viewer, tmp_path):
    from napari._app_model import get_app_model
    from napari.utils.theme import get_theme

    from napari_segsuite.widgets._layers import add_result
    from napari_segsuite.widgets.finetune import FinetuneWidget

    scan = np.random.default_rng(0).normal(size=(5, 8, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(scan, AFFINE), tmp_path / "brain.nii.gz")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "brain.nii.gz"), plugin="napari-segsuite")
    assert tuple(image.scale) == (0.5, 0.5, 1.2)
    card = new_model("unet", label_values=[0, 1], depth=2, base_filters=4).card
    labels = add_result(viewer, (image.data > 0).astype(np.uint8), image, card, {})
    assert tuple(labels.scale) == (0.5, 0.5, 1.2) and "segsuite_source" in labels.metadata
    [out] = labels.save(str(tmp_path / "brain_seg.nii.gz"), plugin="napari-segsuite")
    saved = nib.load(out)
    assert saved.shape == scan.shape and np.allclose(saved.affine, AFFINE)
    titles = [getattr(i, "command", None) for i in get_app_model().menus.get_menu("napari/layers/segment")]
    assert {"Segment (napari-segsuite)", "Fine-tune (napari-segsuite)"} <= {t.title for t in titles if t}

    widget = FinetuneWidget(viewer)
    viewer.theme = "light"
    assert widget.plot.colours["bg"] == get_theme("light").background.as_hex()
