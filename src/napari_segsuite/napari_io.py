"""napari's reader and writer contributions (``napari.yaml``): the engine's formats as layers.

No napari import here: napari calls these with paths and plain layer data, and takes layer data
tuples back.

- Reader: NIfTI (napari has none), OME-TIFF (napari's own TIFF reader drops the pixel sizes) and,
  with the optional bioio extra, vendor formats. The layer's ``scale`` is the voxel size and
  ``metadata["segsuite_source"]`` keeps the file's geometry (NIfTI affine), so labels drawn or
  segmented on it are written back in the scan's voxel grid. Files named like label files
  (``case1_seg.nii.gz``) holding integers open as Labels layers.
- Writer: a Labels layer to TIFF (OME-TIFF with the pixel size) or NIfTI, plus its objects table
  (``features``) as ``<name>_objects.csv`` beside it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io import LABEL_NAME_SUFFIXES, read_image_info, write_labels, write_objects_table
from .io_formats import NIFTI_SUFFIXES, OME_TIFF_SUFFIXES, VENDOR_SUFFIXES, ImageInfo, full_suffix, stem_of

READER_SUFFIXES = (*NIFTI_SUFFIXES, *OME_TIFF_SUFFIXES, *VENDOR_SUFFIXES)
WRITER_SUFFIXES = (".tif", ".tiff", *NIFTI_SUFFIXES, *OME_TIFF_SUFFIXES)

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: :func:`read_layers` for the files this plugin reads, else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or any(full_suffix(p) not in READER_SUFFIXES for p in paths):
        return None
    if any(full_suffix(p) in VENDOR_SUFFIXES for p in paths) and importlib.util.find_spec("bioio") is None:
        return None  # another plugin may read it; we would only say what to install
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """One layer per file: an Image layer, or a Labels layer for an integer file named like labels."""
    paths = [path] if isinstance(path, str) else list(path)
    return [_layer(read_image_info(p), Path(p)) for p in paths]


def _layer(info: ImageInfo, path: Path) -> LayerData:
    data = info.data
    is_labels = stem_of(path).lower().endswith(LABEL_NAME_SUFFIXES) and (
        np.issubdtype(data.dtype, np.integer) or bool(np.all(np.mod(data, 1) == 0))
    )
    rgb = not is_labels and info.axes.endswith("C") and data.shape[-1] in (3, 4)
    n = data.ndim - int(rgb)  # the axes napari scales: spatial ones last, (C, Z, Y, X) from a TIFF included
    vs = tuple(info.voxel_size or ())[-n:]
    kwargs: dict[str, Any] = {
        "name": stem_of(path),
        "scale": (1.0,) * (n - len(vs)) + vs,
        "metadata": {"segsuite_source": info.metadata()},
    }
    if is_labels:
        return (data if np.issubdtype(data.dtype, np.integer) else data.astype(np.int32), kwargs, "labels")
    kwargs["rgb"] = rgb
    return data, kwargs, "image"


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari's writer hook for one Labels layer: the labels (NIfTI in the scan's voxel grid when
    the layer came from a NIfTI scan), and ``<name>_objects.csv`` when the layer has a features table."""
    labels = np.asarray(data[0] if isinstance(data, list) else data)  # multiscale: the full resolution
    if full_suffix(path) not in WRITER_SUFFIXES:
        path = f"{path}.tif"
    source = (meta.get("metadata") or {}).get("segsuite_source")
    like = ImageInfo.from_metadata(source, labels) if source else None
    scale = tuple(float(s) for s in meta.get("scale") or ())[-labels.ndim :]
    voxel = scale if scale and any(s != 1 for s in scale) else None
    written = [str(write_labels(path, labels, like=like, voxel_size=voxel))]
    features = meta.get("features")
    if features is not None and len(features):
        table = {str(c): np.asarray(features[c]) for c in features.columns}
        written.append(str(write_objects_table(Path(path).with_name(f"{stem_of(path)}_objects.csv"), table)))
    return written
