"""Files: reading images, matching images to labels, and model files (safetensors + JSON).

A saved model is a folder holding ``model.safetensors`` (the weights) and ``model.json`` (the card:
architecture, build arguments, task kind, classes and label values, normalisation, training
summary, metrics). Nothing is ever unpickled.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")
LABEL_NAME_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "_gt", "_annotation", "_annotations")
WEIGHTS_FILE, CARD_FILE = "model.safetensors", "model.json"
FORMAT_VERSION = 1


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


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image atomically. PNG keeps 8/16-bit labels; anything else is written as TIFF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png" and labels.ndim == 2 and labels.max(initial=0) < 65536:
        labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    elif path.suffix.lower() not in (".tif", ".tiff"):
        path = path.with_suffix(".tif")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if path.suffix.lower() == ".png":
        import imageio.v3 as iio

        iio.imwrite(tmp, labels)
    else:
        import tifffile

        tifffile.imwrite(tmp, labels, compression="zlib")
    os.replace(tmp, path)
    return path


def write_objects_table(path: str | Path, features: dict[str, np.ndarray]) -> Path:
    """Write a per-object table (``index``, ``class``, ``score``, ...) as CSV, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(features)
    rows = zip(*(np.asarray(features[k]).tolist() for k in keys))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(",".join(keys) + "\n")
        for row in rows:
            fh.write(",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + "\n")
    os.replace(tmp, path)
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


# --- model files -----------------------------------------------------------------------------

@dataclass
class SegModel:
    """A model ready to run: the network plus its card.

    Attributes:
        module: The ``nn.Module``; its forward maps ``(N, C, H, W)`` float32 to class logits.
        card: JSON-serialisable description. Keys: ``format``, ``architecture`` (registry name),
            ``kind``, ``build`` (builder kwargs), ``in_channels``, ``num_classes``, ``class_names``,
            ``label_values`` (user value of each class), ``normalization``, ``divisible_by``,
            ``unannotated_value`` (sparse labels), ``training`` (summary), ``metrics``, ``name``, ``parent``.
    """

    module: nn.Module
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.card.get("architecture", "model"))


def new_model(
    architecture: str,
    *,
    label_values: list[int],
    in_channels: int = 1,
    class_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    unannotated_value: int | None = None,
    **build_kwargs: Any,
) -> SegModel:
    """A randomly initialised model of a registered architecture, with its card filled in.

    Args:
        label_values: The user's label value of each class, sorted.
        unannotated_value: For sparse annotation: the label value meaning "not annotated" (0 by the
            plugin's rule); those pixels are ignored in training and evaluation. ``None``: dense labels.
    """
    from .models import get_spec
    from .preprocess import DEFAULT_NORMALIZATION

    spec = get_spec(architecture)
    num_classes = len(label_values)
    kwargs = {**spec.defaults, **build_kwargs}
    accepted = set(inspect.signature(spec.builder).parameters)
    wrong = sorted(set(kwargs) - accepted)
    if wrong:
        raise ValueError(
            f"Model {architecture!r} does not take {', '.join(wrong)}; it takes "
            f"{', '.join(sorted(accepted - {'num_classes', 'in_channels'}))}."
        )
    module = spec.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    card = {
        "format": FORMAT_VERSION,
        "name": architecture,
        "architecture": architecture,
        "kind": spec.kind,
        "build": {k: v for k, v in kwargs.items() if k != "weights"},
        "in_channels": in_channels,
        "num_classes": num_classes,
        "label_values": [int(v) for v in label_values],
        "class_names": class_names or [f"class {v}" for v in label_values],
        "normalization": normalization or dict(DEFAULT_NORMALIZATION),
        "divisible_by": spec.divisible_by,
        "spatial_dims": spec.spatial_dims,
        "unannotated_value": unannotated_value,
        "parent": None,
        "training": None,
        "metrics": None,
    }
    return SegModel(module, card)


def check_model_destination(path: str | Path) -> Path:
    """``path`` as a Path, if a model may be saved there: a new path or an existing model folder.

    Raises:
        ValueError: something that is not a saved model is there (it is never replaced).
    """
    path = Path(path)
    if path.exists() and not (path / CARD_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} exists and is not a saved model; choose a new folder name for the model "
            "(an existing model folder is replaced, anything else is left alone)."
        )
    return path


def save_model(model: SegModel, path: str | Path) -> Path:
    """Save ``model`` as a folder (``model.safetensors`` + ``model.json``), atomically.

    The folder is written under a temporary name and renamed into place, so a crash never leaves a
    half-written model; an existing model at ``path`` is replaced only once the new one is complete.
    """
    path = check_model_destination(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "napari-segsuite"})
    (tmp / CARD_FILE).write_text(json.dumps(model.card, indent=2, default=_json_default))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model folder is an ordinary folder
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~umask)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            _rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def is_model_path(spec: str | Path) -> bool:
    p = Path(spec)
    return (p / CARD_FILE).is_file() or (p.name in (CARD_FILE, WEIGHTS_FILE) and p.is_file())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SegModel:
    """Load a model folder saved by :func:`save_model` (the folder, or either file in it).

    Raises:
        FileNotFoundError: no model there.
        ValueError: the card names an unknown architecture or the weights do not fit it.
    """
    from .models import get_spec

    p = Path(path)
    folder = p.parent if p.name in (CARD_FILE, WEIGHTS_FILE) else p
    if not (folder / CARD_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"No saved model at {str(path)!r}: expected a folder with {CARD_FILE} and {WEIGHTS_FILE} "
            "(as written by 'segsuite train --out')."
        )
    card = json.loads((folder / CARD_FILE).read_text())
    try:
        spec = get_spec(card["architecture"])
    except KeyError as err:
        raise ValueError(f"Model at {str(path)!r}: {err.args[0]}") from None
    module = spec.builder(num_classes=card["num_classes"], in_channels=card["in_channels"], **card["build"])
    try:
        module.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"))
    except RuntimeError as err:
        raise ValueError(f"The weights at {str(path)!r} do not fit architecture {card['architecture']!r}: {err}") from None
    module.to(device).eval()
    card["path"] = str(folder)
    return SegModel(module, card)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a local ``.safetensors`` file (the ``weights=`` argument of the builders)."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if p.suffix != ".safetensors":
        raise ValueError(f"Weights file {str(path)!r} is not a .safetensors file; only safetensors are loaded.")
    return load_file(str(p), device="cpu")
