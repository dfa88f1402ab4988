"""Initial weights: ``None`` (random), a local ``.safetensors`` file, or ``"imagenet"`` encoders.

ImageNet encoder weights are downloaded by segmentation-models-pytorch; where there is no internet
that fails, and the model falls back to random weights with one clear warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)


def load_local(model: nn.Module, weights: str | None) -> nn.Module:
    """Load a local safetensors file into ``model`` when ``weights`` names one."""
    if weights is None or weights == "imagenet":
        return model
    model.load_state_dict(load_state_dict_file(weights))
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a local ``.safetensors`` file, or a model folder's ``model.safetensors``.

    Raises:
        ValueError: not a safetensors file (nothing else is ever loaded: no pickles).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix != ".safetensors":
        raise ValueError(f"Weights file {str(path)!r} is not a .safetensors file; only safetensors are loaded.")
    return load_file(str(p), device="cpu")


def encoder_weights(weights: str | None) -> str | None:
    """The ``encoder_weights`` value for smp: ``"imagenet"`` when asked for, else ``None``."""
    return "imagenet" if weights == "imagenet" else None


def build_with_fallback(make: Callable[[str | None], nn.Module], weights: str | None, name: str) -> nn.Module:
    """Call ``make(encoder_weights)``; if ImageNet weights cannot be fetched, warn once and use random ones."""
    ew = encoder_weights(weights)
    if ew is None:
        return make(None)
    try:
        return make(ew)
    except Exception as err:  # network errors come in many types (URLError, HF hub errors, OSError)
        log.warning(
            "Could not download ImageNet weights for %s (%s: %s); using random weights instead.",
            name,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        return make(None)
