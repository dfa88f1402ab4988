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

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")
LABEL_NAME_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "_gt", "_annotation", "_annotations")


# --- images ----------------------------------------------------------------------------------


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF, PNG, JPEG, BMP or ``.npy`` file as a numpy array (axes as stored)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return _drop_singletons(tifffile.imread(path))
    if suffix == ".npy":
        return _drop_singletons(np.load(path, allow_pickle=False))
    import imageio.v3 as iio

    return _drop_singletons(iio.imread(path))


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image as integer values, whatever the file's colour model.

    Palette PNGs give their indices (not colours); an RGB(A) label image whose channels are equal
    (a grey mask saved as colour) gives one channel; trailing or leading axes of length 1 are dropped.

    Raises:
        ValueError: a colour label image whose channels differ (colours are not classes).
    """
    path = Path(path)
    if path.suffix.lower() in (".png", ".bmp", ".gif"):
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        arr = read_image(path)
    arr = _drop_singletons(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
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
    """The file :func:`write_labels` writes for ``path``: PNG and TIFF names stay, others become ``.tif``."""
    path = Path(path)
    return path if path.suffix.lower() in (".png", ".tif", ".tiff") else path.with_suffix(".tif")


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image atomically. PNG keeps 8/16-bit labels (larger or 3D labels go to TIFF beside
    it); anything else is written as TIFF."""
    path = label_path(path)
    if path.suffix.lower() == ".png" and labels.ndim == 2 and labels.max(initial=0) < 65536:
        labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    elif path.suffix.lower() == ".png":
        path = path.with_suffix(".tif")
    with atomic_write(path) as tmp:
        if path.suffix.lower() == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, labels)
        else:
            import tifffile

            tifffile.imwrite(tmp, labels, compression="zlib")
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


def list_images(spec: str | Path) -> list[Path]:
    """Image files named by a folder, a single file or a glob pattern, sorted naturally.

    Raises:
        FileNotFoundError: nothing matches; the message says what was looked for.
    """
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in glob.glob(str(spec)) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(
            f"No images found at {str(spec)!r}: give a folder, a file or a glob pattern of "
            f"{', '.join(IMAGE_SUFFIXES)} files."
        )
    return sorted(files, key=_natural_key)


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _label_key(path: Path) -> str:
    stem = path.stem.lower()
    for suffix in LABEL_NAME_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_pairs(images: str | Path, labels: str | Path) -> list[tuple[Path, Path]]:
    """Pair image files with label files by name.

    A label file matches an image with the same stem, or the stem plus a suffix such as ``_mask``
    or ``_labels``; extensions may differ (``cell1.tif`` <-> ``cell1_mask.png``).

    Raises:
        FileNotFoundError: an image has no label file, or no pair is found.
    """
    image_files = list_images(images)
    by_key = {_label_key(f): f for f in list_images(labels)}
    pairs, missing = [], []
    for img in image_files:
        lab = by_key.get(img.stem.lower())
        (pairs.append((img, lab)) if lab is not None else missing.append(img.name))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no label file of the same name in {str(labels)!r}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Label files match by file "
            "name (extension and a suffix like '_mask' may differ)."
        )
    return pairs
