"""The model card: everything ``model.json`` holds beside the weights, typed and validated in one place.

Pydantic (already installed with napari, through npe2 and app-model) rather than a dataclass: a
card from someone else is data we did not write, and pydantic gives type checks, range checks and an
error naming the offending field without hand-written validation code.

Format history:

- **1** (napari-segsuite 0.1): panoptic thing classes among the builder arguments (``build.thing_classes``),
  and the folder a model was loaded from sometimes saved as ``path``.
- **2**: ``thing_classes`` is a field of its own (the task reads it; the network never did), ``path``
  is never saved.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FORMAT_VERSION = 3
#: Largest sizes a card may declare; beyond them a card would make the program exhaust memory.
MAX_CLASSES = 1024
MAX_CHANNELS = 16
#: Largest number and longest list a builder argument may hold (no architecture needs more).
MAX_BUILD_INT, MAX_BUILD_LIST = 1_000_000, 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: A text builder argument is a name (``"interp"``, ``"resnet34"``, ``"tu-convnext_tiny.fb_in1k"``), never a
#: path or an address: a card never makes the program read anything outside its own folder.
_WORD = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")


class CardError(ValueError):
    """A model card that cannot be used; the message names the field."""


class ModelCard(BaseModel):
    """What a model is and how it was made (``model.json``).

    Attributes:
        format: Card format version (:data:`FORMAT_VERSION`); older cards are migrated on reading.
        name: The model's name (its folder's name in the store).
        description: One line on what the model is for.
        architecture: Registry name of the architecture (``"unet"``, ...).
        kind: The task (``"semantic"``, ``"instance"``, ``"panoptic"`` or a registered one).
        build: Builder keyword arguments besides ``num_classes`` and ``in_channels``.
        in_channels: Image channels the model takes (1 grey, 3 colour).
        num_classes: Classes the model predicts (for ``unet-instance``: background, interior, boundary).
        label_values: The user's label value of each class, sorted.
        class_names: A name per class.
        normalization: ``{"kind": "percentile", "low": 1.0, "high": 99.8}`` or ``{"kind": "none"}``.
        divisible_by: Input height and width the model needs a multiple of.
        spatial_dims: 2 (images, volumes slice by slice) or 3 (native 3D).
        unannotated_value: Label value meaning "not annotated" (sparse labels); ``None``: dense labels.
        thing_classes: Panoptic models: class indices of the countable classes.
        voxel_size: Physical size of a pixel (Y, X) or voxel (Z, Y, X) of the training images, in the
            file's unit (micrometres for microscopy, millimetres for MRI); ``None``: not known.
        ignore_value: A label value excluded from loss and metrics (e.g. 255 in VOC exports);
            ``None``: every value is a class.
        postprocessing: Post-processing settings the task chose on the validation images after
            training (instance map models: ``interior_threshold``, ``seed_h``); empty: the defaults.
        threshold: Two-class semantic models: the class-1 probability from which a pixel is class 1,
            chosen on the validation images after training (``None``: the most probable class).
        tta: Segment with test-time augmentation (maps averaged over mirrorings): after training,
            kept unless it scored clearly worse on the validation images; on where nothing was held out.
        mirror_axes: Images of a fixed orientation (e.g. brain MRI): the spatial axes (0 = the first)
            along which its training crops were mirrored, and test-time augmentation mirrors; no
            rotations either way. ``None``: any orientation (all mirrorings, 90-degree rotations).
        downsample: Native 3D models: the model sees volumes on a grid this many times coarser than
            the input's (averaged down before, class probabilities interpolated back after; :mod:`.grid`).
        position: The network reads, besides the image, where each pixel or voxel lies in it: one
            channel per spatial axis after the image's, then a sine and a cosine of it at each of
            ``position_frequencies`` (:mod:`.position`).
        position_frequencies: The frequencies of a place-reading model's sines and cosines.
        parent: The model this one was fine-tuned from (``name``, ``path``, ``metrics``).
        training: Training summary (samples, steps, seconds, history, settings).
        metrics: Validation metrics of the kept model (the task's, plus ``score`` and ``loss``).
        comparison: Fine-tuned models: parent and new model scored on the same validation images.
        path: The folder the model was loaded from; never saved.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    format: int = FORMAT_VERSION
    name: str = Field(min_length=1, max_length=255)
    description: str = ""
    architecture: str
    kind: str
    build: dict[str, Any] = Field(default_factory=dict)
    in_channels: int = Field(default=1, ge=1, le=MAX_CHANNELS)
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    label_values: list[int]
    class_names: list[str]
    normalization: dict[str, Any] = Field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8})
    divisible_by: int = Field(default=1, ge=1, le=1024)
    spatial_dims: Literal[2, 3] = 2
    unannotated_value: int | None = None
    thing_classes: list[int] = Field(default_factory=list)
    voxel_size: list[float] | None = None
    ignore_value: int | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    postprocessing: dict[str, float] = Field(default_factory=dict)
    tta: bool = False
    mirror_axes: list[int] | None = None
    downsample: int = Field(default=1, ge=1, le=8)
    position: bool = False
    position_frequencies: list[int] = Field(default_factory=list, max_length=8)
    parent: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    path: str | None = Field(default=None, exclude=True)

    @field_validator("architecture", "kind")
    @classmethod
    def _registry_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a registry name (lowercase letters, digits, '-', '_', '.')")
        return v

    @field_validator("build")
    @classmethod
    def _plain_build(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key == "weights":
                raise ValueError("'weights' is not kept in a card: the weights are the model's own file")
            for item in value if isinstance(value, (list, tuple)) else [value]:
                _check_build_value(key, item)
            if isinstance(value, (list, tuple)) and len(value) > MAX_BUILD_LIST:
                raise ValueError(f"argument {key!r} holds {len(value)} values, more than {MAX_BUILD_LIST}")
        return v

    @field_validator("normalization")
    @classmethod
    def _normalization(cls, v: dict[str, Any]) -> dict[str, Any]:
        kind = v.get("kind")
        if kind not in ("percentile", "none"):
            raise ValueError(f"kind {kind!r} is not a normalisation: use 'percentile' (with low and high) or 'none'")
        extra = sorted(set(v) - ({"kind", "low", "high"} if kind == "percentile" else {"kind"}))
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, extra))} for kind {kind!r}")
        if kind == "none":
            return v
        for key in ("low", "high"):
            x = v.get(key)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 100:
                raise ValueError(f"{key} must be a percentile from 0 to 100, got {x!r}")
        if not v["low"] < v["high"]:
            raise ValueError(f"low ({v['low']}) must be below high ({v['high']})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(self.label_values) != self.num_classes:
            raise ValueError(f"label_values has {len(self.label_values)} values for {self.num_classes} classes")
        if sorted(set(self.label_values)) != self.label_values:
            raise ValueError("label_values must be sorted and distinct")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        vs = self.voxel_size
        if vs is not None and (len(vs) not in (2, 3) or not all(0 < v < 1e6 for v in vs)):
            raise ValueError("voxel_size must hold 2 or 3 positive sizes (Y, X) or (Z, Y, X)")
        if self.ignore_value is not None and self.ignore_value in self.label_values:
            raise ValueError(f"ignore_value {self.ignore_value} is the label value of a class; it cannot be ignored")
        bad = [c for c in self.thing_classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"thing_classes {bad} are not class indices 0..{self.num_classes - 1}")
        return self

    # --- reading and writing -------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any, source: str = "model card") -> ModelCard:
        """A card from parsed ``model.json`` content, migrated from older formats and validated.

        Raises:
            CardError: not a card, a newer format, or a field that is unknown or ill-typed (named).
        """
        if not isinstance(data, dict):
            raise CardError(f"{source}: not a model card (a JSON object was expected).")
        data = migrate(data, source)
        if "thing_classes" not in data and _takes_objects(data.get("kind")):
            raise CardError(
                f"{source}: field 'thing_classes': missing; a {data.get('kind')} model's card lists the class "
                "indices of its countable classes (e.g. [1]), [] for none. Add it, or train the model again."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "card"
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            raise CardError(f"{source}: field {field!r}: {msg}.") from None

    def to_json(self) -> dict[str, Any]:
        """The card as plain data (``path`` left out); NaN scores stay NaN (written as ``NaN``, as
        Python's json reads and writes them)."""
        return self.model_dump(mode="python")

    def dumps(self) -> str:
        """The card as ``model.json`` text."""
        return json.dumps(self.to_json(), indent=2, default=_plain)

    @property
    def display_name(self) -> str:
        return self.name or self.architecture


def migrate(data: dict[str, Any], source: str = "model card") -> dict[str, Any]:
    """Bring a card of an older format up to :data:`FORMAT_VERSION` (a new dict; the input is kept).

    Raises:
        CardError: the card is of a newer format than this program knows.
    """
    data = dict(data)
    version = data.get("format", 1)
    if not isinstance(version, int) or version < 1:
        raise CardError(f"{source}: field 'format': {version!r} is not a card format version.")
    if version > FORMAT_VERSION:
        raise CardError(
            f"{source}: field 'format': card format {version} is newer than this napari-segsuite reads "
            f"({FORMAT_VERSION}); update napari-segsuite."
        )
    if version == 1:
        if not isinstance(data.get("build") or {}, dict):
            raise CardError(f"{source}: field 'build': not a table of builder arguments.")
        build = dict(data.get("build") or {})
        if not isinstance(build.get("thing_classes", []), (list, tuple)):
            raise CardError(f"{source}: field 'build.thing_classes': not a list of class indices.")
        if "thing_classes" in build or _takes_objects(data.get("kind")):  # format 1's builder default: (1,)
            data["thing_classes"] = [int(c) for c in build.pop("thing_classes", (1,))]
        data["build"] = build
        data.pop("path", None)
        data["format"] = version = 2
    if version == 2:  # format 2's distance-map models seeded above a level of 0.5 unless calibrated otherwise
        build, post = data.get("build") or {}, data.get("postprocessing") or {}
        seeded = isinstance(post, dict) and ("dist_h" in post or "seed_threshold" in post)
        if isinstance(build, dict) and build.get("distance") and isinstance(post, dict) and not seeded:
            data["postprocessing"] = {**post, "seed_threshold": 0.5}
        data["format"] = 3
    return data


def _check_build_value(key: str, x: Any) -> None:
    """One builder argument value (or list item): a number of sane size, a name, or ``None``."""
    if isinstance(x, bool) or x is None:
        return
    if isinstance(x, int):
        if abs(x) > MAX_BUILD_INT:
            raise ValueError(f"argument {key!r} is {x}, beyond the {MAX_BUILD_INT:,} any architecture takes")
    elif isinstance(x, float):
        if not (x == x and abs(x) <= MAX_BUILD_INT):  # NaN and infinities too
            raise ValueError(f"argument {key!r} is {x}, not a usable number")
    elif isinstance(x, str):
        if not _WORD.match(x) or ".." in x or len(x) > 128:
            raise ValueError(f"argument {key!r} is {x!r}: builder arguments are names, never paths or addresses")
    else:
        raise ValueError(f"argument {key!r} holds a {type(x).__name__}; only numbers, text and lists")


def _takes_objects(kind: Any) -> bool:
    """Whether a card's task trains on objects beside classes (whose format-1 cards kept thing classes)."""
    from .tasks import get_task

    try:
        return isinstance(kind, str) and get_task(kind).takes_objects
    except KeyError:
        return False


def _plain(o: Any) -> Any:
    """numpy scalars and arrays (in metrics and history) as plain JSON values."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def parse_class_names(text: str) -> dict[int, str]:
    """``"0: background, 1: nucleus"`` as ``{0: "background", 1: "nucleus"}`` (``=`` works as ``:``).

    Raises:
        ValueError: one sentence quoting the part that is not ``value: name``.
    """
    names: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        value, sep, name = part.replace("=", ":").partition(":")
        try:
            if not sep or not name.strip():
                raise ValueError
            names[int(value)] = name.strip()
        except ValueError:
            raise ValueError(
                f"Class names are 'value: name' pairs separated by commas (e.g. 0: background, 1: nucleus); "
                f"{part!r} is not one."
            ) from None
    return names


def class_names_text(card: ModelCard) -> str:
    """A card's class names as ``"0: background, 1: nucleus"`` (what :func:`parse_class_names` reads)."""
    return ", ".join(f"{v}: {n}" for v, n in zip(card.label_values, card.class_names))


def rename_classes(card: ModelCard, names: dict[int, str]) -> None:
    """Give the classes of ``card`` (by label value) the user's names; values not named keep theirs.

    Raises:
        ValueError: a value that is not one of the model's label values.
    """
    unknown = sorted(set(names) - set(card.label_values))
    if unknown:
        raise ValueError(
            f"Class value{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} not in the model "
            f"'{card.display_name}' (its values: {', '.join(map(str, card.label_values))}); name only those."
        )
    card.class_names = [names.get(v, n) for v, n in zip(card.label_values, card.class_names)]
