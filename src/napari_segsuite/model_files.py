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
from safetensors.torch import load_file, save_file
from torch import nn

from .card import CardError, ModelCard
from .models import get_spec
from .preprocess import DEFAULT_NORMALIZATION

WEIGHTS_FILE, CARD_FILE = "model.safetensors", "model.json"


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
    """The card's architecture built with its arguments, refusing arguments the builder does not take."""
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
    try:
        return spec.builder(num_classes=card.num_classes, in_channels=card.in_channels, **card.build)
    except (TypeError, ValueError) as err:
        raise CardError(f"{source}: field 'build': {err}") from None


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
        ValueError: the architecture does not take one of ``build_kwargs``.
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
    module = spec.builder(num_classes=len(label_values), in_channels=in_channels, **kwargs)
    card = ModelCard(
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
    return SegModel(module, card)


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
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
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
        raise ValueError(f"The weights at {str(path)!r} do not fit architecture {card.architecture!r}: {err}") from None
    module.to(device).eval()
    card.path = str(folder)
    return SegModel(module, card)
