"""Axes handling and intensity normalisation: any user image -> float32 ``(S, C, H, W)`` slices.

Axis conventions (as napari gives them): 2D ``(Y, X)``, RGB(A) ``(Y, X, 3|4)``, volumes
``(Z, Y, X)``, RGB volumes ``(Z, Y, X, 3|4)``. A trailing axis of size 3 or 4 is read as colour, as
napari does, unless ``rgb=False`` is passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_NORMALIZATION: dict[str, Any] = {"kind": "percentile", "low": 1.0, "high": 99.8}


@dataclass(frozen=True)
class Axes:
    """How a user array is laid out: ``volume`` has a leading Z axis, ``rgb`` a trailing channel axis."""

    volume: bool
    rgb: bool

    def spatial_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The label shape that belongs to an image of ``shape``: ``(Z, Y, X)`` or ``(Y, X)``."""
        return tuple(shape[:-1]) if self.rgb else tuple(shape)


def infer_axes(shape: tuple[int, ...], rgb: bool | None = None) -> Axes:
    """Decide the layout of an image array from its ``shape``.

    Raises:
        ValueError: the shape is not 2D, 2D colour, 3D or 3D colour.
    """
    nd = len(shape)
    looks_rgb = nd in (3, 4) and shape[-1] in (3, 4)
    is_rgb = looks_rgb if rgb is None else bool(rgb)
    if is_rgb and shape[-1] not in (3, 4):
        raise ValueError(f"Image of shape {shape} was marked RGB but its last axis is not 3 or 4 long.")
    spatial = nd - 1 if is_rgb else nd
    if spatial not in (2, 3):
        raise ValueError(
            f"Image of shape {shape} is not supported: expected (Y, X), (Y, X, 3), (Z, Y, X) or "
            "(Z, Y, X, 3). Split time or channel axes into separate images first."
        )
    return Axes(volume=spatial == 3, rgb=is_rgb)


def to_slices(image: np.ndarray, axes: Axes, in_channels: int) -> np.ndarray:
    """Arrange ``image`` as float32 ``(S, C, H, W)``: S is 1 for 2D images, Z for volumes.

    Colour is adapted to the model: alpha is dropped, RGB is averaged for a 1-channel model, and
    grayscale is repeated for a 3-channel model.
    """
    arr = np.asarray(image)
    if not axes.volume:
        arr = arr[None]
    arr = arr[..., :3] if axes.rgb else arr[..., None]
    arr = np.moveaxis(arr, -1, 1).astype(np.float32, copy=False)
    c = arr.shape[1]
    if c != in_channels:
        if in_channels == 1:
            arr = arr.mean(axis=1, keepdims=True)
        elif c == 1:
            arr = np.repeat(arr, in_channels, axis=1)
        else:
            raise ValueError(f"The model takes {in_channels} channels; this image has {c}.")
    return arr


def normalize(slices: np.ndarray, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Percentile normalisation per channel over the whole image or volume.

    The ``low`` percentile maps to 0 and the ``high`` one to 1 (values beyond are kept, not clipped),
    so images from different microscopes, bit depths and exposures look alike to the model.

    Args:
        slices: ``(S, C, H, W)`` float32.
        spec: ``{"kind": "percentile", "low": 1.0, "high": 99.8}`` (the default) or ``{"kind": "none"}``.

    Raises:
        ValueError: no pixels, no finite value, or an unknown ``spec``.
    """
    stats = normalization_stats(slices, spec)
    return slices if stats is None else apply_normalization(slices, stats)


#: Beyond this many values per channel, percentiles come from an evenly strided sample.
SAMPLE_VALUES = 4_000_000


def sample_step(n_values: int) -> int:
    """The stride of the percentile sample of a channel holding ``n_values`` values (1: all of them)."""
    return n_values // SAMPLE_VALUES if n_values > SAMPLE_VALUES else 1


def normalization_stats(slices: np.ndarray, spec: dict[str, Any] | None = None) -> NormStats | None:
    """What :func:`normalize` applies to ``(S, C, H, W)`` slices (``None``: nothing, for kind ``none``).

    Raises:
        ValueError: no pixels, no finite value, or an unknown ``spec``.
    """
    spec = check_normalization(spec)
    if spec is None:
        return None
    if slices.size == 0:
        raise ValueError(f"The image has no pixels (shape {slices.shape}); there is nothing to segment.")
    samples = []
    for c in range(slices.shape[1]):
        sample = slices[:, c].ravel()
        samples.append(sample[:: sample_step(sample.size)])
    finite = bool(np.isfinite(slices).all())
    return stats_from_samples(samples, spec, finite=finite, any_finite=finite or bool(np.isfinite(slices).any()))


def check_normalization(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The percentile spec (the default when ``None``), or ``None`` for kind ``none``.

    Raises:
        ValueError: an unknown kind.
    """
    spec = spec or DEFAULT_NORMALIZATION
    if spec.get("kind") == "none":
        return None
    if spec.get("kind") != "percentile":
        raise ValueError(f"Unknown normalisation {spec!r}; use kind 'percentile' or 'none'.")
    return spec


@dataclass(frozen=True)
class NormStats:
    """Per channel: the value mapped to 0 and the span mapped to 1; ``partial``: the image holds NaN or inf."""

    low: tuple[float, ...]
    scale: tuple[float, ...]
    partial: bool


def stats_from_samples(samples: list[np.ndarray], spec: dict[str, Any], *, finite: bool, any_finite: bool) -> NormStats:
    """Percentile statistics from each channel's strided sample (see :func:`sample_step`).

    Raises:
        ValueError: no finite value at all.
    """
    if not any_finite:
        raise ValueError("The image holds no finite value (all NaN or infinite); there is nothing to segment.")
    if not finite:
        log.warning("The image holds NaN or infinite values; they are treated as the image's lowest value.")
    lows, scales = [], []
    for sample in samples:
        if not finite:
            sample = sample[np.isfinite(sample)]
            sample = sample if sample.size else np.zeros(1, np.float32)
        lo, hi = np.percentile(sample, [spec["low"], spec["high"]])
        lows.append(lo)
        scales.append(hi - lo if hi > lo else 1.0)
    return NormStats(tuple(lows), tuple(scales), not finite)


def apply_normalization(slices: np.ndarray, stats: NormStats) -> np.ndarray:
    """Normalise ``(S, C, H, W)`` slices (the whole image or any block of it: the result per pixel is the same)."""
    out = np.empty_like(slices, dtype=np.float32)
    for c in range(slices.shape[1]):
        out[:, c] = (slices[:, c] - stats.low[c]) / stats.scale[c]
    if stats.partial:
        out[~np.isfinite(slices)] = 0.0
    if not np.isfinite(out).all():  # values near the float32 limits overflow when shifted
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1e6, neginf=-1e6)
    return out


class LabelMap:
    """Maps the user's label values (e.g. 0/255) to class indices 0..K-1 and back.

    Args:
        values: Sorted distinct label values; ``values[k]`` is the user's value of class ``k``.
        unannotated: The value meaning "not annotated" with sparse labels (mapped to ignore, never
            reported as unknown); ``None`` for dense labels.
        ignore: A declared "ignore" value (e.g. 255 in VOC exports): never a class, mapped to ignore
            and never reported as unknown; ``None``: none.
    """

    def __init__(self, values: list[int], unannotated: int | None = None, ignore: int | None = None) -> None:
        self.values = [int(v) for v in values]
        self.unannotated = unannotated
        self.ignore = ignore
        if sorted(set(self.values)) != self.values:
            raise ValueError(f"Label values must be sorted and distinct, got {values}.")

    @classmethod
    def from_labels(cls, labels: list[np.ndarray], max_classes: int = 64, ignore: int | None = None) -> LabelMap:
        """The label values found in ``labels``, sorted (without the ``ignore`` value).

        Raises:
            ValueError: more than ``max_classes`` values, which means an instance image, not classes.
        """
        vals: set[int] = set()
        for lab in labels:
            vals.update(int(v) for v in np.unique(lab))
            vals -= {ignore} if ignore is not None else set()
            if len(vals) > max_classes:
                raise ValueError(
                    f"The labels hold more than {max_classes} distinct values; that looks like an "
                    "instance image (one id per object), not classes. Give a semantic model one class "
                    "value per pixel (e.g. 0 background, 1 foreground)."
                )
        for v in (0, 1, 2):  # one value or none: background and one class (never the ignore value)
            if len(vals) < 2 and v != ignore:
                vals.add(v)
        return cls(sorted(vals), ignore=ignore)

    def to_classes(self, labels: np.ndarray, ignore: int = -1) -> np.ndarray:
        """int64 class indices; values the map does not know become ``ignore``."""
        values = np.asarray(self.values)
        idx = np.searchsorted(values, labels)
        idx = np.clip(idx, 0, len(values) - 1)
        known = values[idx] == labels
        return np.where(known, idx, ignore).astype(np.int64)

    @classmethod
    def of_card(cls, card: Any) -> LabelMap:
        """The label map a :class:`~.card.ModelCard` describes (``label_values``, ``unannotated_value``
        and ``ignore_value``)."""
        return cls(card.label_values, card.unannotated_value, getattr(card, "ignore_value", None))

    def unknown_values(self, labels: np.ndarray) -> list[int]:
        """Values in ``labels`` that are neither a class nor the "not annotated" or "ignore" value."""
        return sorted({int(v) for v in np.unique(labels)} - set(self.values) - {self.unannotated, self.ignore})

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """The user's values for class indices, in the smallest unsigned dtype that holds them (int64
        where a value is negative)."""
        lo, hi = min(self.values), max(self.values)
        dtype = (np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int64) if lo >= 0 else np.int64
        return np.asarray(self.values, dtype=dtype)[classes]
