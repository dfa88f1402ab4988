"""Image and label files: reading, writing, and matching images to their labels by name.

Model files live in :mod:`.model_files`.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_write
from .io_formats import (
    MAX_PIXELS,
    NIFTI_SUFFIXES,
    OME_TIFF_SUFFIXES,
    VENDOR_SUFFIXES,
    ImageInfo,
    ImageReadError,
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
    "ImageReadError",
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


#: Training mirrors of images of a fixed orientation: left-right only, the last axis (X) of a NIfTI
#: volume once reoriented to RAS+ (:attr:`~.train_config.TrainConfig.mirror_axes`).
LEFT_RIGHT = (-1,)


def fixed_orientation(sources: Sequence[str | Path | None]) -> tuple[int, ...] | None:
    """The :attr:`~.train_config.TrainConfig.mirror_axes` for training images read from ``sources``:
    :data:`LEFT_RIGHT` when all are NIfTI (scans in anatomical orientation, reoriented to RAS+ on
    reading), else ``None`` (any orientation: microscopy)."""
    return LEFT_RIGHT if sources and all(s is not None and is_nifti(s) for s in sources) else None


def read_image_info(path: str | Path) -> ImageInfo:
    """Read an image file with what it says about its geometry (:class:`~.io_formats.ImageInfo`).

    TIFF (OME and ImageJ pixel sizes), NIfTI (reoriented to ``(Z, Y, X)``, closest canonical RAS+;
    see :mod:`.io_formats`), PNG, JPEG, BMP, ``.npy``, and vendor formats (CZI, ND2, LIF, ...) with
    the optional ``bioio`` extra. Axes of length 1 are dropped.

    Raises:
        FileNotFoundError: there is no such file.
        ImageReadError: (a ``ValueError``) the file is not an image of its kind, is damaged or
            truncated, holds no numbers, declares more than :data:`~.io_formats.MAX_PIXELS` values, or
            is a vendor format whose reader is not installed (the message says what to install).
    """
    path = Path(path)
    suffix = full_suffix(path)
    with _reading(path):
        if suffix in NIFTI_SUFFIXES:
            info = read_nifti(path)
        elif suffix in VENDOR_SUFFIXES:
            info = read_bioio(path)
        elif suffix in (".tif", ".tiff", *OME_TIFF_SUFFIXES):
            info = read_tiff(path)
        elif suffix == ".npy":
            mapped = _checked(path, np.load(path, allow_pickle=False, mmap_mode="r"))  # the header, not the data yet
            info = ImageInfo(np.array(mapped), source=str(path))
        else:
            import imageio.v3 as iio

            info = ImageInfo(iio.imread(path), source=str(path))
        info.data = _checked(path, _drop_singletons(np.asarray(info.data)))
    return info


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever a format library raises on a damaged file into one :class:`ImageReadError` naming it."""
    try:
        yield
    except (ImageReadError, FileNotFoundError):
        raise
    except PermissionError:
        raise ImageReadError(f"Cannot read {path.name!r}: no permission to read it; check its permissions.") from None
    except Exception as err:  # each library has its own error types (OSError, zlib.error, TiffFileError, ...)
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ImageReadError(
            f"Cannot read {path.name!r} as a {full_suffix(path) or 'image'} file ({why}); it may be damaged, "
            "truncated or not an image: export or copy it again, or move it out of the folder."
        ) from None


def _checked(path: Path, arr: np.ndarray) -> np.ndarray:
    """``arr`` if it holds numbers and at most :data:`MAX_PIXELS` values."""
    if arr.dtype.kind not in "biuf":
        raise ImageReadError(f"{path.name!r} holds {arr.dtype} values, not pixel values; save it as numbers.")
    if arr.size > MAX_PIXELS:
        raise ImageReadError(f"{path.name!r} holds {arr.size:,} values, more than this program reads into memory.")
    return arr


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
        FileNotFoundError: there is no such file.
        ImageReadError: (a ``ValueError``) the file cannot be read (see :func:`read_image_info`), or
            holds colours whose channels differ (colours are not classes), NaN or fractional values.
        ValueError: a polygon file that cannot be read or does not fit (:func:`~.annotations.read_polygons`).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        from .annotations import read_polygons

        return read_polygons(path, image)
    if path.suffix.lower() in (".png", ".bmp", ".gif"):
        from PIL import Image

        with _reading(path), Image.open(path) as im:
            arr = _checked(path, np.asarray(im))
    else:
        arr = read_image(path)
    arr = _drop_singletons(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not is_nifti(path):
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():
            arr = rgb[..., 0]
        elif arr.shape[0] > 4:  # a colour-coded mask, not a short (Z, Y, X) volume
            raise ImageReadError(
                f"Label image {path.name!r} is in colour with different channels; save the labels as one "
                "channel of integer values (class ids or object ids)."
            )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageReadError(f"Label image {path.name!r} holds NaN or infinite values; labels must be integers.")
        if not np.all(np.mod(arr, 1) == 0):
            raise ImageReadError(f"Label image {path.name!r} holds fractional values; labels must be integers.")
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
    if path.suffix.lower() == ".png" and labels.ndim == 2:
        labels = _png_labels(path, labels)
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


def _png_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """``labels`` as 8- or 16-bit unsigned integers, the most a PNG holds.

    Raises:
        ValueError: values outside 0..65535 (e.g. 65536 objects or more): the message names the file and
            suggests TIFF, rather than wrapping ids around or writing another file than the one asked for.
    """
    top, low = int(labels.max(initial=0)), int(labels.min(initial=0))
    if low < 0 or top > 65535:
        n = int(np.count_nonzero(np.unique(labels))) if labels.size else 0
        what = f"negative values ({low})" if low < 0 else f"label values up to {top} ({n} objects)"
        raise ValueError(
            f"{path.name}: a PNG holds label values 0..65535 (16 bits) at most, and these labels have {what}; "
            f"write them as TIFF instead ({path.with_suffix('.tif').name})."
        )
    return labels.astype(np.uint8 if top < 256 else np.uint16)


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
        ImageReadError: ``spec`` is a file of another kind.
    """
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if full_suffix(f) in suffixes and not f.name.startswith(".") and f.is_file()]
    elif p.is_file():
        if full_suffix(p) not in suffixes:
            raise ImageReadError(
                f"{p.name!r} is not a file of a kind this program reads ({', '.join(suffixes)}); give an image "
                "file, a folder or a glob pattern."
            )
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
