"""Image and label files: reading, writing, and matching images to their labels by name.

Model files live in :mod:`.model_files`.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_write
from .io_formats import (
    NIFTI_SUFFIXES,
    OME_TIFF_SUFFIXES,
    VENDOR_SUFFIXES,
    ImageInfo,
    full_suffix,
    is_nifti,
    read_bioio,
    read_nifti,
    read_tiff,
    stem_of,
    write_nifti,
    write_tiff,
)

IMAGE_SUFFIXES = (
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".npy",
    *NIFTI_SUFFIXES,
    *OME_TIFF_SUFFIXES,
    *VENDOR_SUFFIXES,
)
LABEL_NAME_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "_gt", "_annotation", "_annotations")

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "full_suffix",
    "label_path",
    "list_images",
    "match_pairs",
    "read_image",
    "read_image_info",
    "read_labels",
    "stem_of",
    "write_labels",
    "write_objects_table",
]


# --- images ----------------------------------------------------------------------------------


def read_image_info(path: str | Path) -> ImageInfo:
    """Read an image file with what it says about its geometry (:class:`~.io_formats.ImageInfo`).

    TIFF (OME and ImageJ pixel sizes), NIfTI (reoriented to ``(Z, Y, X)``, closest canonical RAS+;
    see :mod:`.io_formats`), PNG, JPEG, BMP, ``.npy``, and vendor formats (CZI, ND2, LIF, ...) with
    the optional ``bioio`` extra. Axes of length 1 are dropped.

    Raises:
        ValueError: a vendor format whose reader is not installed (the message says what to install).
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in VENDOR_SUFFIXES:
        return read_bioio(path)
    if suffix in (".tif", ".tiff", *OME_TIFF_SUFFIXES):
        info = read_tiff(path)
    elif suffix == ".npy":
        info = ImageInfo(np.load(path, allow_pickle=False), source=str(path))
    else:
        import imageio.v3 as iio

        info = ImageInfo(iio.imread(path), source=str(path))
    info.data = _drop_singletons(info.data)
    return info


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a numpy array (see :func:`read_image_info` for the formats and axes)."""
    return read_image_info(path).data


def read_labels(path: str | Path, image: str | Path | None = None) -> np.ndarray:
    """Read a label image as integer values, whatever the file's colour model.

    A ``.json`` file holds polygons (labelme, or COCO from CVAT and others) and gives an instance
    label image (:func:`~.annotations.read_polygons`; ``image`` picks the image of a COCO file).

    Palette PNGs give their indices (not colours); an RGB(A) label image whose channels are equal
    (a grey mask saved as colour) gives one channel; trailing or leading axes of length 1 are dropped.
    NIfTI label volumes come in the orientation :func:`read_image_info` gives their scans.

    Raises:
        ValueError: a colour label image whose channels differ (colours are not classes).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        from .annotations import read_polygons

        return read_polygons(path, image)
    if path.suffix.lower() in (".png", ".bmp", ".gif"):
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        arr = read_image(path)
    arr = _drop_singletons(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not is_nifti(path):
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():
            arr = rgb[..., 0]
        elif arr.shape[0] > 4:  # a colour-coded mask, not a short (Z, Y, X) volume
            raise ValueError(
                f"Label image {path.name!r} is in colour with different channels; save the labels as one "
                "channel of integer values (class ids or object ids)."
            )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"Label image {path.name!r} holds fractional values; labels must be integers.")
        arr = arr.astype(np.int64)
    return arr


def _drop_singletons(arr: np.ndarray) -> np.ndarray:
    """Drop axes of length 1 (a (1, Y, X) stack or a (Y, X, 1) image is 2D), keeping at least 2 axes."""
    while arr.ndim > 2 and 1 in arr.shape:
        arr = arr.squeeze(axis=arr.shape.index(1))
    return arr


def label_path(path: str | Path) -> Path:
    """The file :func:`write_labels` writes for ``path``: PNG, TIFF and NIfTI names stay, others become ``.tif``."""
    path = Path(path)
    if full_suffix(path) in (".png", ".tif", ".tiff", *NIFTI_SUFFIXES, *OME_TIFF_SUFFIXES):
        return path
    return path.with_name(stem_of(path) + ".tif")


def write_labels(
    path: str | Path,
    labels: np.ndarray,
    *,
    like: ImageInfo | str | Path | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> Path:
    """Write a label image atomically and return the path written.

    PNG keeps 8/16-bit labels (larger or 3D labels go to TIFF beside it); ``.nii``/``.nii.gz`` is
    NIfTI; anything else is TIFF (OME-TIFF with the physical pixel size when one is known).

    Args:
        like: The image the labels belong to (an :class:`ImageInfo` or its file): a NIfTI file is
            written in that image's voxel grid with its affine and header, so the labels overlay
            the scan in other tools; its voxel size is written to TIFF.
        voxel_size: Pixel or voxel size (``(Y, X)`` or ``(Z, Y, X)``) when there is no ``like``.

    Raises:
        ValueError: NIfTI labels that do not fit ``like``'s image.
    """
    path = label_path(path)
    info = read_image_info(like) if isinstance(like, (str, Path)) else like
    vs = voxel_size or (info.voxel_size if info is not None else None)
    if path.suffix.lower() == ".png" and labels.ndim == 2 and labels.max(initial=0) < 65536:
        labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    elif path.suffix.lower() == ".png":
        path = path.with_suffix(".tif")
    suffix = full_suffix(path)
    with atomic_write(path, suffix=suffix) as tmp:
        if suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, labels)
        elif suffix in NIFTI_SUFFIXES:
            write_nifti(tmp, labels, info, vs)
        else:
            write_tiff(tmp, labels, vs, info.unit if info is not None else None)
    return path


def write_objects_table(path: str | Path, features: dict[str, np.ndarray]) -> Path:
    """Write a per-object table (``index``, ``class``, ``score``, ...) as CSV, atomically."""
    path = Path(path)
    keys = list(features)
    rows = zip(*(np.asarray(features[k]).tolist() for k in keys))
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(",".join(keys) + "\n")
        for row in rows:
            fh.write(",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + "\n")
    return path


def list_images(spec: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files named by a folder, a single file or a glob pattern, sorted naturally.

    Extensions are compared whole (``.nii.gz``, ``.ome.tif``) and in lower case.

    Raises:
        FileNotFoundError: nothing matches; the message says what was looked for.
    """
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if full_suffix(f) in suffixes and not f.name.startswith(".")]
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in glob.glob(str(spec)) if full_suffix(f) in suffixes]
    if not files:
        raise FileNotFoundError(
            f"No images found at {str(spec)!r}: give a folder, a file or a glob pattern of {', '.join(suffixes)} files."
        )
    return sorted(files, key=_natural_key)


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _label_key(path: Path) -> str:
    stem = stem_of(path).lower()
    for suffix in LABEL_NAME_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_pairs(images: str | Path, labels: str | Path) -> list[tuple[Path, Path]]:
    """Pair image files with label files by name.

    A label file matches an image with the same stem, or the stem plus a suffix such as ``_mask``
    or ``_labels``; extensions may differ (``cell1.tif`` <-> ``cell1_mask.png``) and may be double
    (``case1.nii.gz`` <-> ``case1_seg.nii.gz``). Polygon files count as label files: a labelme
    ``.json`` per image (preferred over an image file of the same name: labelme saves its JSON
    beside the image), or one COCO ``.json`` for all images (each image paired with that file;
    read them with ``read_labels(file, image)``).

    Raises:
        FileNotFoundError: an image has no label file, or no pair is found.
    """
    image_files = list_images(images)
    if full_suffix(labels) == ".json" and Path(labels).is_file():
        from .annotations import coco_image_names

        names = coco_image_names(labels)
        if names is not None:
            known = {n.lower() for n in names} | {stem_of(n).lower() for n in names}
            by_key = {
                stem_of(f).lower(): Path(labels) for f in image_files if {f.name.lower(), stem_of(f).lower()} & known
            }
        else:
            by_key = {stem_of(f).lower(): Path(labels) for f in image_files[:1]}  # labelme: one image
    else:
        label_files = sorted(list_images(labels, (*IMAGE_SUFFIXES, ".json")), key=lambda f: full_suffix(f) == ".json")
        by_key = {_label_key(f): f for f in label_files}  # a labelme JSON wins over an image of the same name
    pairs, missing = [], []
    for img in image_files:
        lab = by_key.get(stem_of(img).lower())
        lab = None if lab is not None and lab.resolve() == img.resolve() else lab  # never an image as its own labels
        (pairs.append((img, lab)) if lab is not None else missing.append(img.name))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no label file of the same name in {str(labels)!r}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Label files match by file "
            "name (extension and a suffix like '_mask' may differ)."
        )
    return pairs
