"""Name -> (task kind, builder, defaults): the one table every front end reads.

Adding a model is one file with one ``@register`` line; the CLI, widgets, trainer and tests find it here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one architecture.

    Attributes:
        name: Lowercase registry key, e.g. ``"unet"``.
        kind: The task's name (``"semantic"``, ``"instance"``, ``"panoptic"`` or another registered
            in :mod:`napari_segsuite.tasks`); checked when the model is used, so a task may be
            registered after its models.
        builder: Called with keyword arguments only; returns an ``nn.Module``.
        description: One line for ``segsuite models`` and the widget's picker.
        divisible_by: Input height and width the model needs a multiple of (1 when it pads itself).
        spatial_dims: 2 for models of ``(N, C, H, W)`` (run on volumes slice by slice), 3 for native 3D
            models of ``(N, C, D, H, W)``.
        objects: The model outputs a set of objects (:class:`~.base.ObjectModel`: Mask R-CNN, SOLO,
            DeepMask) and so can learn a class per object; instance models without it predict maps.
        defaults: Keyword arguments the builder gets unless the caller overrides them.
        training: Training settings this model does best with where the user sets none
            (``patch_size``, ``lr``: see :class:`~napari_segsuite.training.TrainConfig`).
        has_encoder: The module has a separate encoder (:func:`~.base.encoder_of`), so fine-tuning
            may freeze it; front ends offer freezing only then.
        channels_last: Keep the network's weights, and so its activations, channels-last (NHWC): the
            CPU's convolutions (oneDNN) and CUDA's tensor cores run faster on that layout for most
            2D networks; set where it was measured faster (:mod:`napari_segsuite.layout`).
    """

    name: str
    kind: str
    builder: Callable[..., nn.Module]
    description: str
    divisible_by: int = 1
    spatial_dims: int = 2
    defaults: dict[str, Any] = field(default_factory=dict)
    objects: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    has_encoder: bool = True
    channels_last: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    kind: str,
    description: str,
    divisible_by: int = 1,
    spatial_dims: int = 2,
    objects: bool = False,
    training: dict[str, Any] | None = None,
    has_encoder: bool = True,
    channels_last: bool = False,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"A model named {name!r} is already registered.")
        _REGISTRY[name] = ModelSpec(
            name,
            kind,
            builder,
            description,
            divisible_by,
            spatial_dims,
            dict(defaults),
            objects,
            dict(training or {}),
            has_encoder,
            channels_last,
        )
        return builder

    return deco


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``.

    Raises:
        KeyError: no such model; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"No model named {name!r}. Registered models: {', '.join(sorted(_REGISTRY))}.") from None


def available(kind: str | None = None) -> list[ModelSpec]:
    """Registered specs, sorted by name, optionally only those of one task ``kind``."""
    return [s for _, s in sorted(_REGISTRY.items()) if kind is None or s.kind == kind]


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with its defaults overridden by ``kwargs``."""
    spec = get_spec(name)
    return spec.builder(**{**spec.defaults, **kwargs})


def markdown_table() -> str:
    """The README's model table, one row per registered model, from the registry's own descriptions."""
    rows = ["| name | task | dims | what it is |", "|---|---|---|---|"]
    for s in available():
        rows.append(f"| `{s.name}` | {s.kind} | {s.spatial_dims}D | {s.description} |")
    return "\n".join(rows)


def unregister(name: str) -> None:
    """Remove a registered model (for tests and plugins that register models temporarily)."""
    _REGISTRY.pop(name, None)
