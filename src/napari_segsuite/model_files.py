"""Model files: a folder holding ``model.safetensors`` (the weights) and ``model.json`` (the
:class:`~.card.ModelCard`). Nothing is ever unpickled, and a card never makes the program read,
write or import anything outside its own folder.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from .card import CardError, ModelCard
from .layout import apply_layout
from .models import get_spec
from .position import input_channels
from .preprocess import DEFAULT_NORMALIZATION

WEIGHTS_FILE, CARD_FILE = "model.safetensors", "model.json"
#: Most parameters a card may ask a network to have (4 GB of float32 weights; the largest registered
#: architectures with the largest encoders have well under a tenth of it).
MAX_PARAMETERS = 1_000_000_000
#: Largest ``model.json`` read (training histories make cards of a few hundred kB).
MAX_CARD_BYTES = 64 << 20


@dataclass
class SegModel:
    """A model ready to run: the network and its card.

    Attributes:
        module: The ``nn.Module``: ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) float32 in, the task's maps out.
        card: Its :class:`~.card.ModelCard`.
    """

    module: nn.Module
    card: ModelCard

    @property
    def name(self) -> str:
        return self.card.display_name


def _build_module(card: ModelCard, source: str) -> nn.Module:
    """The card's architecture built with its arguments, after checking the card against the registry's
    spec of it (task, input multiple, 2D or 3D, the arguments the builder takes) and the size of the
    network the arguments ask for (built first on torch's ``meta`` device, which allocates nothing).

    Raises:
        CardError: naming the field that does not fit.
    """
    try:
        spec = get_spec(card.architecture)
    except KeyError as err:
        raise CardError(f"{source}: field 'architecture': {err.args[0]}") from None
    accepted = set(inspect.signature(spec.builder).parameters) - {"num_classes", "in_channels"}
    wrong = sorted(set(card.build) - accepted)
    if wrong:
        raise CardError(
            f"{source}: field 'build': architecture {card.architecture!r} does not take {', '.join(wrong)}; "
            f"it takes {', '.join(sorted(accepted - {'weights'}))}."
        )
    if spec.kind != card.kind:
        raise CardError(f"{source}: field 'kind': {card.architecture!r} is a {spec.kind} model, not {card.kind}.")
    for field, want, got in (
        ("spatial_dims", spec.spatial_dims, card.spatial_dims),
        ("divisible_by", spec.divisible_by, card.divisible_by),
    ):
        if want != got:
            what = f"is a {want}D model" if field == "spatial_dims" else f"takes inputs in multiples of {want} pixel(s)"
            raise CardError(f"{source}: field {field!r}: {card.architecture!r} {what}, not {got}.")

    where = f"{source}: field 'build': "
    return _build_checked(spec, card.num_classes, input_channels(card), card.build, where, CardError)


def fresh_module(card: ModelCard) -> nn.Module:
    """A new, untrained network of ``card`` (its architecture, arguments and input channels)."""
    return _build_module(card, "model card")


def _build_checked(
    spec: Any, num_classes: int, in_channels: int, kwargs: dict[str, Any], where: str, error: type[ValueError]
) -> nn.Module:
    """``spec``'s network built with ``kwargs``, first on torch's ``meta`` device (nothing allocated, no
    weights fetched) to refuse a network of more than :data:`MAX_PARAMETERS` parameters.

    Raises:
        ValueError: (``error``, its message after ``where``) too large, or the builder refused its arguments.
        OSError, KeyError: new models only: a weights file that is not there, an encoder smp does not know.
    """

    def build(**extra: Any) -> nn.Module:
        return spec.builder(num_classes=num_classes, in_channels=in_channels, **{**kwargs, **extra})

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build(**({"weights": None} if "weights" in kwargs else {})).parameters())
        if n > MAX_PARAMETERS:
            raise error(
                f"{where}{args} make a {spec.name} network of {n:,} parameters, more than the {MAX_PARAMETERS:,} "
                "a model may have."
            )
        return apply_layout(build(), spec)
    except error:
        raise
    except (OSError, KeyError):
        if error is CardError:
            raise error(f"{where}{spec.name!r} cannot be built with {args}.") from None
        raise  # their own messages name the file or the encoder
    except Exception as err:  # a builder refusing its arguments, whatever the error type
        why = " ".join(str(err).split())[:300] or type(err).__name__
        raise error(f"{where}{spec.name!r} cannot be built with {args}: {why}") from None


def new_model(
    architecture: str,
    *,
    label_values: list[int],
    in_channels: int = 1,
    class_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    unannotated_value: int | None = None,
    thing_classes: list[int] | None = None,
    ignore_value: int | None = None,
    **build_kwargs: Any,
) -> SegModel:
    """A randomly initialised model of a registered architecture, with its card filled in.

    Args:
        label_values: The user's label value of each class, sorted.
        unannotated_value: For sparse annotation: the label value meaning "not annotated" (0 by the
            plugin's rule); those pixels are ignored in training and evaluation. ``None``: dense labels.
        thing_classes: Panoptic models: the class indices of the countable classes.
        ignore_value: A label value that is never a class and is left out of loss and metrics
            (e.g. 255 in VOC exports); ``None``: none.
        build_kwargs: Builder arguments (``weights`` is used to build and not kept in the card).

    Raises:
        ValueError: the architecture does not take one of ``build_kwargs``, refuses their values, or
            they make a network of more than :data:`MAX_PARAMETERS` parameters.
    """
    spec = get_spec(architecture)
    kwargs = {**spec.defaults, **build_kwargs}
    accepted = set(inspect.signature(spec.builder).parameters)
    wrong = sorted(set(kwargs) - accepted)
    if wrong:
        raise ValueError(
            f"Model {architecture!r} does not take {', '.join(wrong)}; it takes "
            f"{', '.join(sorted(accepted - {'num_classes', 'in_channels'}))}."
        )
    card = _card_of(  # first: what a card could not keep is refused before anything is built
        name=architecture,
        architecture=architecture,
        kind=spec.kind,
        build={k: v for k, v in kwargs.items() if k != "weights"},
        in_channels=in_channels,
        num_classes=len(label_values),
        label_values=[int(v) for v in label_values],
        class_names=class_names or [f"class {v}" for v in label_values],
        normalization=normalization or dict(DEFAULT_NORMALIZATION),
        divisible_by=spec.divisible_by,
        spatial_dims=spec.spatial_dims,
        unannotated_value=unannotated_value,
        thing_classes=[int(c) for c in thing_classes or []],
        ignore_value=ignore_value,
    )
    module = _build_checked(spec, len(label_values), in_channels, kwargs, "", ValueError)
    return SegModel(module, card)


def _card_of(**fields: Any) -> ModelCard:
    """A new model's card; an argument the card cannot keep (e.g. a path as an encoder name) is named."""
    try:
        return ModelCard(**fields)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "card"
        raise ValueError(f"This model cannot be made: {where}: {e['msg'].removeprefix('Value error, ')}.") from None


def check_model_destination(path: str | Path) -> Path:
    """``path`` as a Path, if a model may be saved there: a new path, an empty folder or an existing model folder.

    Raises:
        ValueError: something that is not a saved model is there (it is never replaced).
    """
    path = Path(path)
    empty_folder = path.is_dir() and not any(path.iterdir())
    if path.exists() and not empty_folder and not (path / CARD_FILE).is_file():
        raise ValueError(
            f"{str(path)!r} exists and is not a saved model; choose a new folder name for the model "
            "(an existing model folder is replaced, anything else is left alone)."
        )
    return path


def write_card(folder: str | Path, card: ModelCard) -> None:
    """Write ``card`` as ``model.json`` in ``folder``, atomically."""
    from ._fs import write_text

    write_text(Path(folder) / CARD_FILE, card.dumps())


def save_model(model: SegModel, path: str | Path) -> Path:
    """Save ``model`` as a folder (``model.safetensors`` + ``model.json``), atomically.

    The folder is written under a temporary name and renamed into place, so a crash never leaves a
    half-written model; an existing model at ``path`` is replaced only once the new one is complete.
    """
    path = check_model_destination(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "napari-segsuite"})
        (tmp / CARD_FILE).write_text(model.card.dumps())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model folder is an ordinary folder
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
    return path


def is_model_path(spec: str | Path) -> bool:
    p = Path(spec)
    return (p / CARD_FILE).is_file() or (p.name in (CARD_FILE, WEIGHTS_FILE) and p.is_file())


def read_card(folder: str | Path) -> ModelCard:
    """The validated card of a model folder.

    Raises:
        CardError: unreadable, not JSON, or not a valid card (the message names the field).
    """
    f = Path(folder) / CARD_FILE
    try:
        if f.stat().st_size > MAX_CARD_BYTES:
            raise OSError(f"{f.stat().st_size:,} bytes, too large for a model card")
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CardError(f"{str(f)!r} is not a readable model card: {err}") from None
    return ModelCard.from_json(data, source=str(f))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SegModel:
    """Load a model folder saved by :func:`save_model` (the folder, or either file in it).

    Raises:
        FileNotFoundError: no model there.
        ValueError: the card is invalid (:class:`~.card.CardError`, naming the field) or the weights
            do not fit it.
    """
    p = Path(path)
    folder = p.parent if p.name in (CARD_FILE, WEIGHTS_FILE) else p
    if not (folder / CARD_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"No saved model at {str(path)!r}: expected a folder with {CARD_FILE} and {WEIGHTS_FILE} "
            "(as written by 'segsuite train --out')."
        )
    card = read_card(folder)
    module = _build_module(card, str(folder / CARD_FILE))
    try:
        module.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device="cpu"))
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        why = " ".join(str(err).split())[:300].rstrip(".")
        raise ValueError(
            f"The weights at {str(folder / WEIGHTS_FILE)!r} are damaged or do not fit the card (architecture "
            f"{card.architecture!r}, {card.in_channels} channel(s), {card.num_classes} classes): {why}. Copy or "
            "export the model folder again, unchanged."
        ) from None
    module.to(device).eval()
    card.path = str(folder)
    return SegModel(module, card)
