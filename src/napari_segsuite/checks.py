"""Checks made before any work starts, shared by the CLI and the widgets.

Each check raises ``ValueError`` with one sentence naming the file or value, what is wrong and the
fix; none of them writes anything. The rule they enforce: an output never lands on an input, and
nothing that exists is replaced unless the user said ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .model_files import check_model_destination

if TYPE_CHECKING:
    from .samples import Sample
    from .training import TrainConfig


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


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
    return out


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
        if out.exists() and not overwrite:
            raise ValueError(
                f"{str(out)!r} exists already; choose another --output folder, or add --overwrite to replace it "
                "(nothing was written)."
            )


def check_model_out(path: str | Path, *, overwrite: bool = False) -> Path:
    """A path a newly trained model may be saved to.

    Raises:
        ValueError: something that is not a model is there (never replaced), or a model is there and
            ``overwrite`` is not set.
    """
    p = check_model_destination(path)  # never anything that is not a model
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
    if cfg.lr is not None and not cfg.lr > 0:
        problems.append(f"the learning rate must be more than 0 (got {cfg.lr})")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        problems.append(f"steps per epoch must be at least 1 (got {cfg.steps_per_epoch})")
    vs = cfg.voxel_size
    if vs is not None and (len(vs) not in (2, 3) or not all(0 < v < 1e6 for v in vs)):
        problems.append(f"the voxel size must be 2 or 3 positive sizes, (Y, X) or (Z, Y, X) (got {list(vs)})")
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
