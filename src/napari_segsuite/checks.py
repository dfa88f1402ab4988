"""Checks made before any work starts, shared by the CLI and the widgets.

Each check raises ``ValueError`` with one sentence naming the file or value, what is wrong and the
fix; none of them writes anything. The rule they enforce: an output never lands on an input, and
nothing that exists is replaced unless the user said ``overwrite``.

- Arrays (a layer's data, a file read): :func:`check_image_array`, :func:`check_label_array` (shape
  and dtype only for lazy arrays: a dask or zarr array is never read);
  :func:`~.samples.check_shapes` runs them over image/label pairs.
- Numbers: :func:`check_train_config`, :func:`check_tile`.
- Paths: :func:`check_output_folder`, :func:`check_outputs`, :func:`check_output_collisions`,
  :func:`segment_outputs` (all of ``segment``'s), :func:`check_model_out`.
- Labels: :func:`check_learnable`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .model_files import check_model_destination
from .preprocess import Axes, infer_axes

if TYPE_CHECKING:
    from .samples import Sample
    from .training import TrainConfig

#: Largest image or volume (pixels or voxels, all channels) the engine takes: beyond it the float
#: copies segmentation and training make would not fit in memory.
MAX_PIXELS = 2**31
#: Largest crop edge and batch a training run may ask for (a typo such as 100000 would exhaust memory).
MAX_PATCH, MAX_BATCH = 4096, 1024
#: Smallest and largest sliding-window tile edge.
MIN_TILE, MAX_TILE = 16, 16384


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: ``os.path.samefile`` where both exist (it sees through
    symbolic and hard links and case-insensitive file systems), else the resolved paths compared."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())
    except OSError:
        return False


def _key(p: Path) -> str:
    """A path as one key for every spelling of it: resolved, and case folded on macOS and Windows, whose
    file systems take names that differ only in case for one file."""
    try:
        p = p.resolve()
    except OSError:
        p = p.absolute()
    return str(p).casefold() if sys.platform in ("darwin", "win32") else str(p)


def check_output_folder(output: str | Path) -> Path:
    """``output`` as a folder path that may receive result files.

    Raises:
        ValueError: ``output`` names an existing file (results go into a folder).
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--output {str(output)!r} is an existing file; give a folder for the label images "
            "(it is created if needed)."
        )
    _no_file_above(out, "--output")
    return out


def _no_file_above(path: Path, flag: str) -> None:
    """Refuse a path that would be created inside an existing file (``img.tif/out``).

    Raises:
        ValueError: names the file.
    """
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{flag} {str(path)!r} lies inside {str(parent)!r}, which is a file, not a folder; choose "
                    "another path (nothing was written)."
                )
            return


def check_outputs(inputs: Iterable[str | Path], outputs: Iterable[str | Path], *, overwrite: bool = False) -> None:
    """Refuse outputs that would replace an input, or (without ``overwrite``) any existing file.

    Raises:
        ValueError: the first clash found, naming the file and the way out.
    """
    ins = [Path(p) for p in inputs]
    for out in map(Path, outputs):
        clash = next((i for i in ins if _same(i, out)), None)
        if clash is not None:
            raise ValueError(
                f"Writing {str(out)!r} would replace the input image {str(clash)!r}; choose another --output "
                "folder (nothing was written)."
            )
        if out.is_dir():
            raise ValueError(
                f"{str(out)!r} is a folder where a result file would go; move it, or choose another --output "
                "folder (nothing was written)."
            )
        if out.exists() and not overwrite:
            raise ValueError(
                f"{str(out)!r} exists already; choose another --output folder, or add --overwrite to replace it "
                "(nothing was written)."
            )


def check_output_collisions(planned: Mapping[Path, Sequence[Path | None]]) -> None:
    """Refuse a run in which two inputs would be written to the same output file (``a.jpg`` and
    ``a.tif`` both give ``a.tif``): the second would silently replace the first.

    Args:
        planned: Each input file and the outputs it will write (``None``: nothing).

    Raises:
        ValueError: names both inputs and the shared output.
    """
    seen: dict[str, Path] = {}
    for src, outs in planned.items():
        for out in outs:
            if out is None:
                continue
            other = seen.setdefault(_key(out), src)
            if other != src:
                raise ValueError(
                    f"The inputs {str(other)!r} and {str(src)!r} would both be written to {str(out)!r}; rename "
                    "one of them or segment them into different --output folders (nothing was written)."
                )


def segment_outputs(model: Any, files: Sequence[Path], output: str | Path, *, overwrite: bool = False) -> dict:
    """The files ``segsuite segment`` writes for each input, checked before any work: no output on an
    input, no two inputs onto one output, nothing existing replaced without ``overwrite``.

    Returns:
        Each input and its ``(labels, objects image or None, objects table or None)``: a panoptic model
        also writes the object ids, and panoptic and object models a table of the objects.

    Raises:
        ValueError: ``output`` is a file, or a clash (named, with the way out).
    """
    from .io_formats import output_names
    from .models.base import ObjectModel
    from .tasks import get_task

    out = check_output_folder(output)
    objects = get_task(model.card.kind).takes_objects
    table = objects or isinstance(model.module, ObjectModel)
    planned: dict[Path, tuple[Path, Path | None, Path | None]] = {}
    for f in files:
        labels, ids, csv = output_names(f, out)
        planned[f] = (labels, ids if objects else None, csv if table else None)
    check_output_collisions(planned)
    check_outputs(files, [p for names in planned.values() for p in names if p is not None], overwrite=overwrite)
    return planned


def check_tile(tile: int) -> None:
    """Refuse a sliding-window tile edge that cannot hold a network's input.

    Raises:
        ValueError: names the value and the range accepted.
    """
    if not MIN_TILE <= tile <= MAX_TILE:
        raise ValueError(
            f"The tile edge (--tile) must be {MIN_TILE} to {MAX_TILE} pixels (got {tile}); 512 (the default) "
            "suits most models, smaller tiles need less memory. Nothing was written."
        )


def check_image_array(image: Any, name: str = "the image", *, rgb: bool | None = None, big: bool = False) -> Axes:
    """Refuse an image the engine cannot segment or train on, from its shape and dtype only (a lazy
    dask or zarr array is never read).

    Returns:
        Its :class:`~.preprocess.Axes`.

    Raises:
        ValueError: no pixels, not numbers, an unsupported number of axes, or more than
            :data:`MAX_PIXELS` values; the message names ``name`` and says what to do.
    """
    shape, dtype = _shape_dtype(image)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} holds {dtype} values; images must hold real numbers (integers or floats). "
            "Convert it to a plain grey or colour image first."
        )
    if 0 in shape or not shape:
        raise ValueError(f"{name} has no pixels (shape {shape}); give an image with at least one pixel.")
    size = math.prod(shape)
    if size > MAX_PIXELS and not big:  # ``big``: segmented block by block (:mod:`.blockwise`)
        raise ValueError(
            f"{name} has {size:,} values (shape {shape}), more than the {MAX_PIXELS:,} this program "
            "segments in memory; save it as zarr and segment it block by block, or crop it first."
        )
    if len(shape) in (3, 4) and shape[-1] == 2 and rgb is None:
        raise ValueError(
            f"{name} of shape {shape} has 2 values per pixel (two channels); the models take grey (Y, X) or "
            "colour (Y, X, 3) images and (Z, Y, X) volumes: save each channel as an image of its own first."
        )
    try:
        return infer_axes(shape, rgb)
    except ValueError as err:
        raise ValueError(str(err).replace("Image of shape", f"{name} of shape", 1)) from None


def _shape_dtype(a: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array of any kind, read from its attributes (a lazy array stays unread)."""
    dt = getattr(a, "dtype", None)
    if dt is None or not hasattr(a, "shape"):
        a = np.asarray(a)
        dt = a.dtype
    return tuple(int(n) for n in a.shape), np.dtype(dt)


def check_label_array(labels: Any, want: tuple[int, ...], name: str = "the image", what: str = "Labels") -> None:
    """Refuse labels that cannot belong to an image of spatial shape ``want``: another shape, not
    numbers, or (in memory) NaN or fractional values. Lazy arrays are checked by shape and dtype only.

    Raises:
        ValueError: names the image and what is wrong.
    """
    shape, dtype = _shape_dtype(labels)
    if shape != tuple(want):
        raise ValueError(
            f"{what} of {name!r} are {'x'.join(map(str, shape))} but the image is "
            f"{'x'.join(map(str, want))}; pick the labels that belong to this image."
        )
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} of {name!r} hold {dtype} values; labels must be integers (class or object ids).")
    if dtype.kind == "f" and isinstance(labels, np.ndarray):
        if not np.isfinite(labels).all():
            raise ValueError(f"{what} of {name!r} hold NaN or infinite values; labels must be integers.")
        if not (np.mod(labels, 1) == 0).all():
            raise ValueError(f"{what} of {name!r} hold fractional values; labels must be integers.")


def check_model_out(path: str | Path, *, overwrite: bool = False) -> Path:
    """A path a newly trained model may be saved to.

    Raises:
        ValueError: something that is not a model is there (never replaced), or a model is there and
            ``overwrite`` is not set.
    """
    p = check_model_destination(path)  # never anything that is not a model
    _no_file_above(p, "--out")
    if p.is_dir() and not any(p.iterdir()):
        return p  # an empty folder made beforehand
    if p.exists() and not overwrite:
        raise ValueError(
            f"{str(p)!r} holds a trained model already; choose another --out, or add --overwrite to replace it."
        )
    return p


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings under which training cannot mean anything.

    Raises:
        ValueError: names the setting, the value and what is accepted.
    """
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs must be at least 1 (got {cfg.epochs})")
    if cfg.time_budget is not None and not cfg.time_budget > 0:
        problems.append(f"the time budget must be more than 0 seconds, or none (got {cfg.time_budget})")
    if cfg.batch_size < 1:
        problems.append(f"the batch size must be at least 1 (got {cfg.batch_size})")
    if cfg.patch_size is not None and cfg.patch_size < 8:
        problems.append(f"the crop size must be at least 8 pixels (got {cfg.patch_size})")
    if cfg.batch_size > MAX_BATCH:
        problems.append(f"the batch size must be at most {MAX_BATCH} (got {cfg.batch_size})")
    if cfg.patch_size is not None and cfg.patch_size > MAX_PATCH:
        problems.append(f"the crop size must be at most {MAX_PATCH} pixels (got {cfg.patch_size})")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        problems.append(f"the learning rate must be a number more than 0 (got {cfg.lr})")
    if cfg.patience is not None and cfg.patience < 0:
        problems.append(f"patience must be 0 (never stop early) or more epochs (got {cfg.patience})")
    if cfg.seed < 0:
        problems.append(f"the seed must be 0 or more (got {cfg.seed})")
    if not 0 <= cfg.pretrain < 1:
        problems.append(f"the pre-training share must be at least 0 and under 1 (got {cfg.pretrain})")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        problems.append(f"steps per epoch must be at least 1 (got {cfg.steps_per_epoch})")
    vs = cfg.voxel_size
    if vs is not None and (len(vs) not in (2, 3) or not all(0 < v < 1e6 for v in vs)):
        problems.append(f"the voxel size must be 2 or 3 positive sizes, (Y, X) or (Z, Y, X) (got {list(vs)})")
    if cfg.downsample is not None and not 1 <= cfg.downsample <= 8:
        problems.append(f"the grid's downsampling factor must be 1 to 8 (got {cfg.downsample})")
    if not 0 <= cfg.val_fraction < 1:
        problems.append(f"the validation share must be in 0..1 (got {cfg.val_fraction})")
    if problems:
        raise ValueError("Nothing was trained: " + "; ".join(problems) + ".")


def check_learnable(samples: Sequence[Sample], names: Sequence[str] | None = None) -> None:
    """Refuse labels from which nothing can be learnt: every known target pixel holds the same value
    (an all-zero layer, one class only) and there is no object.

    Raises:
        ValueError: says what the labels hold and how to fix them.
    """
    seen: set[int] = set()
    for s in samples:
        t = s.truth.classes if s.truth.classes is not None else s.truth.y
        vals = np.unique(t)
        seen |= {int(v) for v in vals if v >= 0}
        has_objects = s.truth.ids is not None and bool((s.truth.ids > 0).any())
        if len(seen) >= 2 or has_objects:  # two kinds of pixel, or objects to find (their centres, outlines)
            return
    what = "no annotated pixel" if not seen else f"only one kind of pixel (target {sorted(seen)[0]})"
    raise ValueError(
        f"Nothing to learn: the labels hold {what}. Paint at least two classes (e.g. background and the "
        "objects), or some objects, then train again. No model was written."
    )


def channel_conversion(in_channels: int, shape: tuple[int, ...], rgb: bool | None) -> str | None:
    """How an image of ``shape`` must be converted for a model of ``in_channels`` channels:
    ``"RGB to grey"``, ``"grey to RGB"``, or ``None`` when it fits as it is (the engine's
    :func:`~.preprocess.to_slices` does the conversion; front ends ask the user first)."""
    from .preprocess import infer_axes

    colour = infer_axes(tuple(shape), rgb).rgb
    if in_channels == 1 and colour:
        return "RGB to grey"
    if in_channels > 1 and not colour:
        return "grey to RGB"
    return None


def check_image_dims(spatial_dims: int, shape: tuple[int, ...], rgb: bool | None, model: str, image: str) -> None:
    """Refuse a native 3D model on a 2D image (2D models run on volumes slice by slice).

    Raises:
        ValueError: one sentence naming the model, the image and the way out.
    """
    from .preprocess import infer_axes

    if spatial_dims == 3 and not infer_axes(tuple(shape), rgb).volume:
        raise ValueError(
            f"'{model}' is a 3D model and '{image}' is a 2D image; pick a 2D model, or open a volume "
            "(a 3D model segments whole volumes, not one slice)."
        )


def check_labels_vary(
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    sparse: bool = False,
    objects: Sequence[np.ndarray | None] | None = None,
) -> None:
    """Refuse labels that hold one value only (with ``sparse``: no two annotated values) and no object
    in ``objects``, before any work: :func:`check_learnable` would refuse them after the model is built.

    Raises:
        ValueError: one sentence naming the layer (or layers) and the fix.
    """
    if any(o is not None and bool((np.asarray(o) > 0).any()) for o in objects or ()):
        return  # objects to find (their centres, outlines): something to learn
    seen: set[int] = set()
    for lab in labels:
        arr = np.asarray(lab)
        if sparse:
            arr = arr[arr != 0]
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            seen |= {lo, hi}
        if len(seen) >= 2:
            return
    which = ", ".join(f"'{n}'" for n in names)
    if not seen:
        held = "no annotated pixel (every pixel is 0, 'not annotated' with sparse labels)"
    else:
        held = f"only the value {seen.pop()}"
    raise ValueError(
        f"Labels {which} hold {held}: paint at least two classes (e.g. background and the objects) before training."
    )
