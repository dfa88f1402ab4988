"""Image formats beyond plain TIFF, PNG and ``.npy``, with the physical size of their pixels.

- **NIfTI** (``.nii``, ``.nii.gz``; nibabel). The voxel array is turned to its *closest canonical*
  orientation, RAS+ (nibabel's ``as_closest_canonical``: the first voxel axis runs to the patient's
  Right, the second to Anterior, the third to Superior), then its axes are reversed, so the array
  is ``(Z, Y, X)`` = (inferior -> superior, posterior -> anterior, left -> right): an axial slice per
  Z, as napari shows volumes. Only axes are permuted and flipped (never resampled), so the voxel
  values are the file's. The file's own affine is kept (:attr:`ImageInfo.affine`) and labels written
  "like" the image go back into the file's voxel grid with that affine and header, so they overlay
  the scan in ITK-SNAP, 3D Slicer or FSLeyes. Voxel sizes come from the affine (the header's zooms),
  reordered to (Z, Y, X); the unit is the header's (mm for MRI and CT).
- **OME-TIFF** (``PhysicalSizeZ/Y/X`` in the OME-XML) and **ImageJ TIFF** (``spacing`` and the
  resolution tags) give their pixel sizes (tifffile).
- **Vendor formats** (CZI, ND2, LIF, ...) are read through ``bioio``, an optional extra
  (``pip install 'napari-segsuite[formats]'`` plus the bioio reader plugin of the format).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")
#: Read with bioio (optional extra), each with its bioio reader plugin.
VENDOR_SUFFIXES = (".czi", ".nd2", ".lif", ".ims", ".oib", ".oir", ".dv")
#: Extensions of two parts: ``Path.suffix`` would give only the last (``"x.nii.gz"`` -> ``".gz"``).
_DOUBLE_SUFFIXES = (".nii.gz", *OME_TIFF_SUFFIXES)
_INSTALL_HINT = "pip install 'napari-segsuite[formats]'"
#: Largest image a file may declare (values, all channels): a damaged header asking for more is refused.
MAX_PIXELS = 2**31


class ImageReadError(ValueError):
    """A file that cannot be read as an image or labels; the message names the file and what to do."""


def full_suffix(path: str | Path) -> str:
    """The file's extension in lower case, double extensions whole: ``"a.nii.gz"`` -> ``".nii.gz"``."""
    name = Path(path).name.lower()
    for s in _DOUBLE_SUFFIXES:
        if name.endswith(s) and len(name) > len(s):
            return s
    return Path(name).suffix


def stem_of(path: str | Path) -> str:
    """The file name without its (possibly double) extension: ``"case1.nii.gz"`` -> ``"case1"``."""
    name = Path(path).name
    return name[: len(name) - len(full_suffix(name))]


def is_nifti(path: str | Path) -> bool:
    return full_suffix(path) in NIFTI_SUFFIXES


@dataclass
class ImageInfo:
    """An image and what its file says about its geometry.

    Attributes:
        data: The pixels, axes ``(Y, X)``, ``(Y, X, C)``, ``(Z, Y, X)`` or ``(Z, Y, X, C)`` (see
            :attr:`axes`); axes of length 1 are dropped.
        voxel_size: Physical size of a pixel ``(Y, X)`` or voxel ``(Z, Y, X)``, in ``unit``, in the
            order of the array's spatial axes; ``(Y, X)`` alone for a volume whose Z step is not
            known; ``None`` when the file does not say.
        unit: The unit of ``voxel_size`` as the file names it (``"mm"``, ``"µm"``, ...), or ``None``.
        affine: NIfTI: the file's own 4x4 voxel-to-world (RAS+ mm) affine, for the file's voxel
            order (not ``data``'s); ``None`` for other formats.
        grid: NIfTI: the ``(Z, Y, X)`` shape of the reoriented volume before axes of length 1
            were dropped (what labels are reshaped to when written back).
        source: The file read.
        header: NIfTI: the file's header (nibabel), reused when labels are written back.
    """

    data: np.ndarray
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    affine: np.ndarray | None = None
    grid: tuple[int, ...] | None = None
    source: str | None = None
    header: Any = field(default=None, repr=False)

    @property
    def axes(self) -> str:
        """The array's axes as letters: ``"YX"``, ``"YXC"``, ``"ZYX"`` or ``"ZYXC"`` (a trailing axis
        of 3 or 4 is colour, as napari reads it)."""
        nd, last = self.data.ndim, self.data.shape[-1]
        if nd == 2:
            return "YX"
        if nd == 3:
            return "YXC" if last in (3, 4) else "ZYX"
        return "ZYXC" if nd == 4 else "?" * (nd - 3) + "ZYX"

    def scale(self) -> tuple[float, ...]:
        """napari's layer ``scale`` for the spatial axes (1 where not known)."""
        spatial = self.axes.count("Z") + 2
        vs = tuple(self.voxel_size or ())
        return (1.0,) * (spatial - len(vs)) + vs[-spatial:]

    def metadata(self) -> dict[str, Any]:
        """What a napari layer keeps in ``metadata["segsuite_source"]`` to write labels back like the file."""
        return {
            "path": self.source,
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "unit": self.unit,
            "affine": None if self.affine is None else np.asarray(self.affine).tolist(),
            "grid": None if self.grid is None else list(self.grid),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], data: np.ndarray) -> ImageInfo:
        """The geometry :meth:`metadata` saved, around ``data``."""
        vs, aff, grid = meta.get("voxel_size"), meta.get("affine"), meta.get("grid")
        return cls(
            data=data,
            voxel_size=None if vs is None else tuple(float(v) for v in vs),
            unit=meta.get("unit"),
            affine=None if aff is None else np.asarray(aff, float),
            grid=None if grid is None else tuple(int(g) for g in grid),
            source=meta.get("path"),
        )


# --- NIfTI --------------------------------------------------------------------------------------


def read_nifti(path: str | Path) -> ImageInfo:
    """A NIfTI image as ``(Z, Y, X)`` in closest-canonical RAS+ orientation (see the module notes).

    A 4th axis (channels, time) of more than one value stays last; axes of length 1 are dropped.
    """
    import nibabel as nib
    from nibabel import orientations as nio

    img: Any = nib.load(str(path))
    _not_too_large(path, img.shape)
    arr = np.asanyarray(img.dataobj)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 4:
        raise ImageReadError(f"{Path(path).name!r} has {arr.ndim} axes; give one volume (3 axes, or 4 with channels).")
    arr = arr.reshape(arr.shape + (1,) * (3 - arr.ndim))  # a 2D file: one slice
    affine = np.asarray(img.affine, np.float64)
    ornt = nio.io_orientation(affine)
    canon = nio.apply_orientation(arr, ornt)
    canon_affine = affine @ nio.inv_ornt_aff(ornt, arr.shape[:3])
    zooms = np.sqrt((canon_affine[:3, :3] ** 2).sum(0))  # X, Y, Z
    zyx = np.ascontiguousarray(np.moveaxis(canon, (0, 1, 2), (2, 1, 0)))
    keep = [a for a in range(3) if zyx.shape[a] > 1]
    while len(keep) < 2:  # at least (Y, X), even for a single voxel or line
        keep = sorted({*keep, max(set(range(3)) - set(keep))})
    data = zyx.reshape(tuple(zyx.shape[a] for a in keep) + zyx.shape[3:])
    sizes = zooms[::-1]
    unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else None
    return ImageInfo(
        data=data,
        voxel_size=tuple(round(float(sizes[a]), 6) for a in keep),
        unit=None if unit in (None, "unknown") else str(unit),
        affine=affine,
        grid=tuple(int(s) for s in zyx.shape[:3]),
        source=str(path),
        header=img.header,
    )


def write_nifti(tmp: Path, labels: np.ndarray, like: ImageInfo | None, voxel_size: tuple[float, ...] | None) -> None:
    """Write ``labels`` (the axes of ``like.data``, else ``(Z, Y, X)`` or ``(Y, X)`` in RAS+) as NIfTI to ``tmp``.

    With a NIfTI ``like``: in the source file's voxel grid, with its affine and header. Otherwise a
    RAS+ affine with ``voxel_size`` (or 1) on the diagonal.

    Raises:
        ValueError: ``labels`` do not have the shape of ``like``'s image.
    """
    import nibabel as nib
    from nibabel import orientations as nio

    labels = np.asarray(labels)
    if labels.dtype == np.int64 or labels.dtype == np.uint64:  # 32 bits keep every tool happy
        labels = labels.astype(np.int32 if labels.max(initial=0) < 2**31 else labels.dtype)
    elif labels.dtype == bool:
        labels = labels.astype(np.uint8)
    header: Any = None
    if like is not None and like.affine is not None and like.grid is not None:
        if labels.shape != like.data.shape[: labels.ndim] or labels.size != int(np.prod(like.grid)):
            raise ValueError(
                f"Labels of shape {labels.shape} do not fit the image {Path(like.source or '').name!r} "
                f"of shape {like.data.shape}; they cannot be written in its voxel grid."
            )
        canon = np.moveaxis(labels.reshape(like.grid), (0, 1, 2), (2, 1, 0))
        ras = nio.axcodes2ornt(("R", "A", "S"))
        arr = nio.apply_orientation(canon, nio.ornt_transform(ras, nio.io_orientation(like.affine)))
        affine = like.affine
        header = like.header
        if header is None and like.source and is_nifti(like.source) and Path(like.source).is_file():
            header = nib.load(like.source).header
        header = None if header is None else header.copy()
    else:
        vs = tuple(voxel_size or (like.voxel_size if like is not None else None) or ())
        vs = (1.0,) * (labels.ndim - len(vs)) + vs[-labels.ndim :]
        arr = labels.transpose()  # (Z, Y, X) -> (X, Y, Z)
        affine = np.diag([*vs[::-1], *(1.0,) * (3 - labels.ndim), 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine, header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label", name="labels")
    nib.save(img, str(tmp))


# --- TIFF metadata ------------------------------------------------------------------------------


def _not_too_large(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse a file whose header declares more than :data:`MAX_PIXELS` values, before reading it."""
    if float(np.prod(shape, dtype=np.float64)) > MAX_PIXELS:
        raise ImageReadError(
            f"{Path(path).name!r} declares {'x'.join(map(str, shape))} values, more than this program reads "
            "into memory; crop or split the image first."
        )


def read_tiff(path: str | Path) -> ImageInfo:
    """A TIFF's first series, with pixel sizes from OME-XML or ImageJ metadata when present."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        _not_too_large(path, series.shape)
        data = series.asarray()
        axes = series.axes.upper()
        sizes: dict[str, float] = {}
        unit = None
        try:
            if tf.is_ome and tf.ome_metadata:
                sizes, unit = _ome_sizes(tf.ome_metadata)
            elif tf.is_imagej:
                sizes, unit = _imagej_sizes(tf)
        except (ValueError, KeyError, TypeError, ET.ParseError) as err:  # metadata is a help, not a must
            log.warning("%s: pixel sizes not read (%s)", Path(path).name, err)
    shape = dict(zip(axes, data.shape))
    z = "Z" in shape and shape["Z"] > 1
    vs = tuple(sizes.get(a) for a in ("ZYX" if z else "YX"))
    if z and vs[0] is None:
        vs = vs[1:]
    voxel = tuple(float(v) for v in vs if v is not None) if all(v is not None for v in vs) else None
    return ImageInfo(data=data, voxel_size=voxel, unit=unit if voxel else None, source=str(path))


def _ome_sizes(xml: str) -> tuple[dict[str, float], str | None]:
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.split("}")[-1] == "Pixels"), None)
    if pixels is None:
        return {}, None
    sizes = {a: float(pixels.get(f"PhysicalSize{a}") or "nan") for a in "ZYX"}
    sizes = {a: v for a, v in sizes.items() if v > 0}
    return sizes, pixels.get("PhysicalSizeXUnit", "µm")  # the OME default unit


def _imagej_sizes(tf: Any) -> tuple[dict[str, float], str | None]:
    meta = tf.imagej_metadata or {}
    unit = meta.get("unit")
    if not unit or unit in ("pixel", "pixels"):
        return {}, None  # an uncalibrated image
    sizes: dict[str, float] = {}
    tags = tf.pages[0].tags
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        if tag in tags:
            num, den = tags[tag].value
            if num > 0 and den > 0:
                sizes[axis] = den / num  # the tags hold pixels per unit
    if meta.get("spacing"):
        sizes["Z"] = float(meta["spacing"])
    unit = "µm" if unit in ("micron", "um", "\\u00B5m") else unit
    return sizes, unit


def write_tiff(tmp: Path, labels: np.ndarray, voxel_size: tuple[float, ...] | None, unit: str | None) -> None:
    """Write ``labels`` as zlib-compressed TIFF; with a voxel size, as OME-TIFF carrying it."""
    import tifffile

    if not voxel_size:
        tifffile.imwrite(tmp, labels, compression="zlib")
        return
    axes = "ZYX"[3 - labels.ndim :] if labels.ndim <= 3 else None
    meta: dict[str, Any] = {"axes": axes}
    for a, v in zip(reversed(axes or ""), reversed(voxel_size)):
        meta[f"PhysicalSize{a}"] = float(v)
        meta[f"PhysicalSize{a}Unit"] = unit or "µm"
    tifffile.imwrite(tmp, labels, compression="zlib", ome=True, metadata=meta)


# --- vendor formats -----------------------------------------------------------------------------


def read_bioio(path: str | Path) -> ImageInfo:
    """A vendor file's first scene (first time point) through bioio: ``(Z, Y, X)``, or
    ``(Z, Y, X, C)`` with several channels, and its physical pixel sizes.

    Raises:
        ValueError: bioio or its reader for this format is not installed (says what to install).
    """
    try:
        from bioio import BioImage
    except ImportError:
        raise ImageReadError(
            f"Reading {full_suffix(path)} files needs the optional formats extra: {_INSTALL_HINT} "
            "and the bioio reader of the format (e.g. bioio-czi, bioio-nd2, bioio-lif)."
        ) from None
    try:
        img = BioImage(str(path))
    except Exception as err:  # bioio names a missing plugin with its own exception types
        raise ImageReadError(
            f"bioio cannot read {Path(path).name!r} ({err}); install the bioio reader of the format "
            "(e.g. pip install bioio-czi)."
        ) from None
    order = "ZYXC" if int(img.dims.C) > 1 else "ZYX"
    data = np.asarray(img.get_image_data(order, T=0))
    pps = img.physical_pixel_sizes
    sizes = {"Z": pps.Z, "Y": pps.Y, "X": pps.X}
    z = data.shape[0] > 1
    while data.ndim > 2 and 1 in data.shape:
        data = data.squeeze(axis=data.shape.index(1))
    vs = [sizes[a] for a in ("ZYX" if z else "YX")]
    if z and not vs[0]:
        vs = vs[1:]
    voxel = tuple(float(v) for v in vs) if all(v for v in vs) else None
    return ImageInfo(data=data, voxel_size=voxel, unit="µm" if voxel else None, source=str(path))


# --- voxel sizes --------------------------------------------------------------------------------


def parse_voxel_size(text: str | None) -> tuple[float, ...] | None:
    """``"2,0.5,0.5"`` -> ``(2.0, 0.5, 0.5)``: a pixel ``Y,X`` or voxel ``Z,Y,X`` size (``None`` for none).

    Raises:
        ValueError: not 2 or 3 positive numbers separated by commas.
    """
    if not text:
        return None
    try:
        vs = tuple(float(v) for v in text.replace(" ", "").replace("x", ",").split(",") if v)
    except ValueError:
        vs = ()
    if len(vs) not in (2, 3) or not all(0 < v < 1e6 for v in vs):
        raise ValueError(
            f"--voxel-size takes 2 or 3 positive sizes separated by commas, Y,X or Z,Y,X (e.g. 2,0.5,0.5); got {text!r}."
        )
    return vs


def common_voxel_size(
    sizes: list[tuple[float, ...] | None], names: list[str] | None = None
) -> tuple[float, ...] | None:
    """The voxel size of a set of images: theirs when they agree (within 1 %), else the median per
    axis (with a warning naming the sizes); images whose file gives none are left out; ``None`` when
    none gives one."""
    known = [(n, tuple(s)) for n, s in zip(names or [f"image {i + 1}" for i in range(len(sizes))], sizes) if s]
    if not known:
        return None
    ndim = max(len(s) for _, s in known)
    same = [s for _, s in known if len(s) == ndim]
    med = tuple(float(v) for v in np.median(np.asarray(same), axis=0))
    if any(len(s) != ndim or not np.allclose(s, med, rtol=0.01) for _, s in known):
        shown = ", ".join(f"{n}: {'x'.join(f'{v:g}' for v in s)}" for n, s in known[:5])
        log.warning(
            "The images' voxel sizes differ (%s%s); the model card records the median %s. Give --voxel-size to set it.",
            shown,
            " ..." if len(known) > 5 else "",
            "x".join(f"{v:g}" for v in med),
        )
    return med


def voxel_size_for(
    text: str | None, sizes: list[tuple[float, ...] | None], names: list[str], *, volume: bool
) -> tuple[float, ...] | None:
    """The voxel size of a training set: ``--voxel-size`` (``text``) if given, else the images' own
    (:func:`common_voxel_size`).

    Raises:
        ValueError: ``text`` is not a size, or not of the images' dimensions.
    """
    vs = parse_voxel_size(text)
    if vs is None:
        return common_voxel_size(sizes, names)
    if len(vs) != (3 if volume else 2):
        raise ValueError(
            f"--voxel-size: the images are {'3D' if volume else '2D'}; give {'Z,Y,X' if volume else 'Y,X'}."
        )
    return vs


def output_names(image: str | Path, folder: str | Path) -> tuple[Path, Path, Path]:
    """Where ``segsuite segment`` writes the results of ``image`` in ``folder``: the labels, the
    objects image (panoptic models) and the objects table.

    Labels keep the image's name (PNG and TIFF) or become TIFF; a NIfTI scan gets NIfTI labels
    named ``<name>_labels.nii.gz`` (``.nii`` for ``.nii``), in the scan's voxel grid.
    """
    folder, stem, suffix = Path(folder), stem_of(image), full_suffix(image)
    if suffix in NIFTI_SUFFIXES:
        return folder / f"{stem}_labels{suffix}", folder / f"{stem}_instances{suffix}", folder / f"{stem}_objects.csv"
    name = Path(image).name if suffix in (".png", ".tif", ".tiff", *OME_TIFF_SUFFIXES) else f"{stem}.tif"
    return folder / name, folder / f"{stem}_instances.tif", folder / f"{stem}_objects.csv"
