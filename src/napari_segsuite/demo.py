"""``segsuite demo``: napari with a sample image and the plugin's widgets.

With ``headless=True`` (what ``make demo`` runs when there is no display, under Xvfb) the same flow
runs by itself: open the sample, segment it with the default model in the Segment widget, then write
the labels and a screenshot of the viewer to ``out``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def open_viewer(show: bool = True):
    """A napari viewer with the nuclei sample and both dock widgets; returns (viewer, segment, finetune)."""
    import napari

    viewer = napari.Viewer(title="napari-segsuite demo", show=show)
    if hasattr(viewer.window, "resize"):
        viewer.window.resize(1500, 950)
    viewer.open_sample("napari-segsuite", "nuclei2d")
    _, seg = viewer.window.add_plugin_dock_widget("napari-segsuite", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-segsuite", "Fine-tune")
    seg.image.value = viewer.layers["nuclei 2D"]
    return viewer, seg, fin


#: What the headless demo writes into its folder.
DEMO_FILES = ("nuclei2d_labels.tif", "screenshot.png")


def existing_outputs(out: Path) -> list[Path]:
    """The files of :data:`DEMO_FILES` already in ``out`` (the demo would replace them)."""
    return [out / name for name in DEMO_FILES if (out / name).exists()]


def run_demo(out: Path, headless: bool, overwrite: bool = False) -> int:
    """Open the demo; headless, segment and write :data:`DEMO_FILES` into ``out``.

    Nothing in ``out`` is replaced unless ``overwrite``: an existing file is named and the demo does not
    start (returns 2).
    """
    if headless and not overwrite:
        taken = existing_outputs(out)
        if taken:
            print(
                f"demo: {taken[0]} exists; the demo would replace it. Pass --overwrite to replace it, "
                "or give another folder with --out."
            )
            return 2
    import napari

    if not headless:
        open_viewer(show=True)
        napari.run()
        return 0
    from qtpy.QtCore import QEventLoop, QTimer

    from ._fs import atomic_write
    from .io import write_labels

    viewer, seg, _ = open_viewer(show=True)
    worker = seg.run()
    if worker is None:
        print("demo: the Segment widget could not start (see the message above)")
        return 1
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    QTimer.singleShot(300_000, loop.quit)
    loop.exec()
    result = [layer for layer in viewer.layers if "segsuite" in layer.metadata]
    if not result:
        print("demo: segmentation did not finish")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    labels_path = write_labels(out / "nuclei2d_labels.tif", result[0].data)
    for _ in range(5):
        napari.qt.get_qapp().processEvents()
    shot = out / "screenshot.png"
    with atomic_write(shot) as tmp:
        viewer.screenshot(str(tmp), canvas_only=False)
    viewer.close()
    print(f"demo: segmented the nuclei sample with '{result[0].metadata['segsuite']['model']}'")
    print(f"demo: labels     {labels_path}")
    print(f"demo: screenshot {shot}")
    return 0
