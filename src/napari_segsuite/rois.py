"""ImageJ/Fiji ROI sets of instance results: one polygon per object (per object and slice in volumes),
written as the ``.zip`` ROI Manager reads (with roifile).

A polygon is the object's outer boundary traced at half height between its pixels and the background
(:func:`skimage.measure.find_contours` on the object's mask), in ImageJ's pixel coordinates, where pixel
``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``; holes are not kept. An object in several pieces in one
image or slice gets the polygon of its largest piece. Volume ROIs carry their slice as ``position``
(1-based, as ImageJ counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Where ``segment --rois`` writes the ROI set of a labels file: ``<stem>_rois.zip`` beside it.
ROI_SUFFIX = "_rois.zip"


def rois_path(labels_path: str | Path) -> Path:
    """The ROI set that goes with a labels file (``cell1.tif`` -> ``cell1_rois.zip``)."""
    from .io_formats import stem_of

    p = Path(labels_path)
    return p.with_name(f"{stem_of(p)}{ROI_SUFFIX}")


def check_rois(
    model: Any, inputs: list[Path], labels_paths: list[Path], *, overwrite: bool = False
) -> dict[Path, Path]:
    """Each labels file's ROI set, checked before any work (``segment --rois``).

    Raises:
        ValueError: the model gives no objects (a semantic model), or a ROI set would replace a file.
    """
    from .checks import check_outputs
    from .tasks import get_task

    if not get_task(model.card.kind).gives_ids:
        raise ValueError(
            f"--rois writes one ROI per object, and '{model.name}' is a semantic model (classes, not objects); "
            "use an instance or panoptic model, or leave out --rois (nothing was written)."
        )
    planned = {p: rois_path(p) for p in labels_paths}
    check_outputs(inputs, planned.values(), overwrite=overwrite)
    return planned


def _polygon(mask: np.ndarray) -> np.ndarray | None:
    """The longest boundary of ``mask`` as ``(x, y)`` points in ImageJ coordinates, or ``None`` (empty)."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1)
    contours = find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return None
    c = max(contours, key=len)[:-1]  # closed: the last point repeats the first
    # padded index r is pixel r - 1, whose centre is at r - 1 + 0.5 in ImageJ's coordinates
    return np.stack([c[:, 1] - 0.5, c[:, 0] - 0.5], axis=1)


def label_rois(labels: np.ndarray, names: dict[int, str] | None = None) -> list[Any]:
    """ImageJ polygon ROIs of the objects in ``labels`` (``(Y, X)`` or ``(Z, Y, X)`` object ids, 0 background).

    Args:
        names: A name per object id (e.g. its class); default ``"object <id>"``.

    Returns:
        ``roifile.ImagejRoi`` objects in id order (and slice order in volumes), each named
        ``"<name>"`` (2D) or ``"<name> z<slice>"`` (volumes, 1-based slices).
    """
    from roifile import ImagejRoi
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"ROIs are made from 2D or 3D labels; got shape {labels.shape}.")
    rois = []
    planes = [labels] if labels.ndim == 2 else list(labels)
    for z, plane in enumerate(planes):
        for i, box in enumerate(ndimage.find_objects(plane.astype(np.int64, copy=False)), start=1):
            if box is None:
                continue
            mask = plane[box] == i
            parts, n = ndimage.label(mask)
            if n > 1:  # the largest piece
                mask = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
            pts = _polygon(mask)
            if pts is None:
                continue
            pts = pts + np.array([box[1].start, box[0].start])
            roi = ImagejRoi.frompoints(pts.astype(np.float32))
            name = (names or {}).get(i, f"object {i}")
            if labels.ndim == 3:
                roi.position = z + 1
                roi.z_position = z + 1
                name = f"{name} z{z + 1}"
            roi.name = name
            rois.append(roi)
    return rois


def write_rois(path: str | Path, labels: np.ndarray, names: dict[int, str] | None = None) -> Path | None:
    """Write the ROI set of ``labels`` (see :func:`label_rois`) to ``path`` (a ``.zip``), atomically.

    Returns:
        The file, or ``None`` when ``labels`` hold no object (nothing is written).
    """
    from roifile import roiwrite

    from ._fs import atomic_write

    rois = label_rois(labels, names)
    if not rois:
        return None
    with atomic_write(path, suffix=".zip") as tmp:
        roiwrite(tmp, rois, mode="w")
    return Path(path)


def object_names(features: dict[str, np.ndarray] | None) -> dict[int, str] | None:
    """ROI names from a result's objects table: ``"<class name> <id>"`` where objects have classes."""
    if not features or "index" not in features or "class_name" not in features:
        return None
    return {int(i): f"{c} {int(i)}" for i, c in zip(features["index"], features["class_name"])}
