"""What the ``segsuite`` commands share: progress bars, reading the user's files and arguments, and
the checks each command makes before any work starts (:mod:`.checks` holds those the widgets share).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Images read by ``segment``'s check pass are kept for the run up to this many bytes (else read again).
KEEP_BYTES = 1 << 30


def _bar(desc: str):
    from tqdm import tqdm

    other_rank = int(os.environ.get("RANK", "0")) > 0  # under torchrun only rank 0 draws
    bar = tqdm(desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, disable=True if other_rank else None)

    def update(p: Any) -> None:
        bar.total = p.total
        bar.n = p.step
        bar.set_postfix_str(p.note, refresh=False)
        bar.refresh()
        if ("val_loss" in p.metrics or "setup" in p.metrics) and not other_rank:  # also in non-interactive logs
            tqdm.write(p.note, file=sys.stderr)

    return bar, update


def run_with_bar(work: Any, desc: str) -> Any:
    """Drive an engine generator to its result with a progress bar on stderr."""
    from .progress import drive

    bar, update = _bar(desc)
    try:
        return drive(work, update)
    finally:
        bar.close()


def in_processes(args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int:
    """``run(args)`` as one of several processes: with ``--gpus N`` (N > 1) outside torchrun the same
    command (without ``--gpus``) runs again as N processes under torch's launcher; under torchrun this
    process joins the others (:func:`~.distributed.init_from_env`) and only rank 0 prints."""
    from . import distributed as ddp

    if args.gpus > 1 and not ddp.launched():
        return ddp.launch(args.argv, args.gpus)
    if ddp.launched() and args.device.startswith("cuda:"):
        args.device = "cuda"  # each process on the GPU of its LOCAL_RANK
    ddp.init_from_env(args.device)
    try:
        with contextlib.redirect_stdout(sys.stdout if ddp.is_main() else io.StringIO()):
            return int(run(args) or 0)
    finally:
        ddp.shutdown()


def load_pairs(images: str, labels: str) -> tuple[list, list, list[str], list]:
    """Images, labels, names and voxel sizes (``None`` where the file gives none) of matched pairs,
    each image checked (pixels, numbers, axes) and its labels checked against it, all before any work.

    Raises:
        ValueError: the first problem, naming the file.
    """
    from .io import match_pairs, read_image_info, read_labels
    from .samples import check_shapes

    pairs = match_pairs(images, labels)
    infos = [read_image_info(i) for i, _ in pairs]
    out = (
        [i.data for i in infos],
        [read_labels(lab, image=img) for img, lab in pairs],
        [i.name for i, _ in pairs],
        [i.voxel_size for i in infos],
    )
    check_shapes(out[0], out[1], None, out[2], None)
    return out


def set_geometry(cfg: Any, voxel_arg: Any, images: list, sizes: list, names: list[str]) -> None:
    """The training images' voxel size (``--voxel-size``, else the files') and orientation into
    ``cfg``: NIfTI scans are mirrored left-right only (:func:`~.io.fixed_orientation`)."""
    from .io import fixed_orientation
    from .io_formats import voxel_size_for
    from .preprocess import infer_axes

    cfg.voxel_size = voxel_size_for(voxel_arg, sizes, names, volume=infer_axes(images[0].shape).volume)
    cfg.mirror_axes = fixed_orientation(names)


def load_instances(images: str, instances: str | None) -> list | None:
    """Object-id images matched to ``images`` by name (``--instances``), or ``None``."""
    if not instances:
        return None
    from .io import match_pairs, read_labels

    return [read_labels(lab, image=img) for img, lab in match_pairs(images, instances)]


def things(text: str | None) -> list[int] | None:
    """``--things 2,3`` as label values."""
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(
            f"--things takes label values separated by commas (e.g. --things 2,3), got {text!r}."
        ) from None


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def build_args(args: argparse.Namespace) -> dict[str, Any]:
    """Builder arguments from --encoder, --weights and --arg KEY=VALUE (new models only)."""
    build: dict[str, Any] = {}
    for item in args.arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg takes KEY=VALUE (e.g. --arg upsample=interp), got {item!r}.")
        build[key.strip()] = _value(value.strip())
    if args.encoder:
        build["encoder_name"] = args.encoder
    if args.weights:
        build["weights"] = args.weights
    return build


def read_for_segment(files: list[Path], model: Any) -> dict[Path, Any]:
    """Read and check every input before anything is written, so that a damaged or unsuitable image
    in the middle of a folder stops the run before its first output, not half way.

    Returns:
        Each file's :class:`~.io_formats.ImageInfo`, or ``None`` where it is read again when its
        turn comes (beyond :data:`KEEP_BYTES` in all).

    Raises:
        ValueError: the first file that cannot be read or segmented by ``model``, named.
    """
    from .checks import check_image_array
    from .io import read_image_info

    kept: dict[Path, Any] = {}
    total = 0
    for f in files:
        info = read_image_info(f)
        axes = check_image_array(info.data, f"Image {f.name!r}")
        c = model.card.in_channels
        if axes.rgb and c not in (1, 3):
            raise ValueError(
                f"Image {f.name!r} is in colour but model {model.name!r} takes {c} channels; give it images "
                f"of {c} channels."
            )
        if info.data.dtype.kind == "f" and not np.isfinite(info.data).any():
            raise ValueError(
                f"Image {f.name!r} holds no finite value (all NaN or infinite); there is nothing to segment."
            )
        total += info.data.nbytes
        kept[f] = info if total <= KEEP_BYTES else None
    return kept
