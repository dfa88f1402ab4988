"""Training samples: the user's images normalised and their labels made into the task's targets,
split into training and validation parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .checks import check_image_array, check_label_array
from .model_files import SegModel
from .position import with_position
from .preprocess import infer_axes, normalize, to_slices
from .tasks import IGNORE, Targets, get_task


@dataclass
class Sample:
    """One training or validation sample.

    Attributes:
        x: ``(C, H, W)`` or, for native 3D models, ``(C, Z, H, W)`` float32, normalised.
        truth: The task's :class:`~.tasks.Targets` of the same spatial shape (``y`` may have a
            leading target-channel axis).
    """

    x: np.ndarray
    truth: Targets

    @property
    def y(self) -> np.ndarray:
        return self.truth.y

    @property
    def class_map(self) -> np.ndarray:
        """The class index of each pixel (``IGNORE`` where unknown), of the sample's spatial shape."""
        m = self.truth.classes if self.truth.classes is not None else self.truth.y
        return m[-1] if m.ndim > self.x.ndim - 1 else m  # (ids, classes) targets: the classes

    def window(self, part: slice, axis: int = -2) -> Sample:
        """The sample's part ``part`` along spatial ``axis`` (negative: from the end; default: the rows)."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            index = [slice(None)] * a.ndim
            index[axis] = part
            return a[tuple(index)]

        t = self.truth
        y = cut(t.y)
        x = cut(self.x)
        assert y is not None and x is not None
        return Sample(x, Targets(y, cut(t.classes), cut(t.ids)))


def _slice(t: Targets, z: int) -> Targets:
    def at(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[..., z, :, :]

    y = at(t.y)
    assert y is not None
    return Targets(y, at(t.classes), at(t.ids))


def check_shapes(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    instances: Sequence[np.ndarray | None] | None,
    names: Sequence[str],
    rgb: bool | None,
) -> None:
    """Refuse image/label pairs whose counts or shapes differ.

    Raises:
        ValueError: names the image and what is wrong (see :func:`~.checks.check_image_array` and
            :func:`~.checks.check_label_array`).
    """
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images; give one label image per image.")
    if instances is not None and len(instances) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(instances)} instance images; give one per image.")
    if not images:
        raise ValueError("No training images were given.")
    for i, (img, lab, name) in enumerate(zip(images, labels, names)):
        want = check_image_array(img, f"Image {name!r}", rgb=rgb).spatial_shape(tuple(np.shape(img)))
        inst = None if instances is None else instances[i]
        for what, arr in (("Labels", lab), ("Instance labels", inst)):
            if arr is not None:
                check_label_array(arr, want, name, what)


def prepare_samples(
    model: SegModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    rgb: bool | None = None,
    instances: Sequence[np.ndarray | None] | None = None,
    strict: bool = True,
) -> list[Sample]:
    """Normalised samples with the task's targets: for 2D models one per image or volume slice, for
    native 3D models one per volume (a 2D image is a one-slice volume).

    What ``labels`` (and ``instances``) mean is the task's (:meth:`~.tasks.Task.targets`): class
    values for semantic models; object ids, or class values plus object ids in ``instances``, for
    instance models; class values plus (optional) object ids for panoptic models.

    Raises:
        ValueError: counts or shapes differ, or labels hold values the model has no class for.
    """
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    check_shapes(images, labels, instances, names, rgb)
    card = model.card
    task = get_task(card.kind)
    three_d = card.spatial_dims == 3
    samples = []
    for i, (img, lab, name) in enumerate(zip(images, labels, names)):
        axes = infer_axes(np.shape(img), rgb)
        x = normalize(to_slices(img, axes, card.in_channels), card.normalization)  # (S, C, H, W)
        spatial = x.shape[2:]
        inst = None if instances is None or instances[i] is None else np.asarray(instances[i]).reshape((-1, *spatial))
        truth = task.targets(
            model, np.asarray(lab).reshape((-1, *spatial)), inst, per_slice=not three_d, name=name, strict=strict
        )
        if three_d:  # the place of each voxel in the whole volume, where the model reads it (position.py)
            samples.append(Sample(with_position(np.ascontiguousarray(np.moveaxis(x, 0, 1)), card), truth))
        else:
            samples += [Sample(with_position(xs, card), _slice(truth, z)) for z, xs in enumerate(x)]
    return samples


def unlabelled_inputs(model: SegModel, images: Sequence[np.ndarray], rgb: bool | None = None) -> list[np.ndarray]:
    """Normalised model inputs of images without labels: ``(C, H, W)`` per image or volume slice for 2D
    models, ``(C, Z, H, W)`` per volume for native 3D models."""
    card = model.card
    out: list[np.ndarray] = []
    for i, img in enumerate(images):
        check_image_array(img, f"Unlabelled image {i + 1}", rgb=rgb)
        x = normalize(to_slices(img, infer_axes(np.shape(img), rgb), card.in_channels), card.normalization)
        xs = [np.ascontiguousarray(np.moveaxis(x, 0, 1))] if card.spatial_dims == 3 else list(x)
        out += [with_position(v, card) for v in xs]
    return out


def split_samples(
    samples: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample], str]:
    """Hold out a validation part: whole images when there are several, else a slab at one end of the
    one image (:func:`_split_one`)."""
    if len(samples) >= 2:
        n_val = min(len(samples) - 1, max(1, round(fraction * len(samples))))
        order = rng.permutation(len(samples))
        return (
            [samples[i] for i in order[n_val:]],
            [samples[i] for i in order[:n_val]],
            f"{n_val} of {len(samples)} images",
        )
    return _split_one(samples[0], fraction)


#: Smallest held-out slab of a single image: in pixels across Y or X, in slices along Z.
MIN_HELD_OUT = {"plane": 16, "z": 8}
_AXIS_NAMES = {1: ("X",), 2: ("Y", "X"), 3: ("Z", "Y", "X")}


def _split_one(s: Sample, fraction: float) -> tuple[list[Sample], list[Sample], str]:
    """One image or volume: hold out a slab at one end of one axis, the one whose classes best match
    the rest's (the most classes present in both parts, then the most pixels of the rarer classes);
    the bottom rows where all slabs are alike. A slab of background alone would score any model
    that finds nothing as perfect and keep the first epoch's weights."""
    classes = s.class_map
    spatial = s.x.shape[1:]
    names = _AXIS_NAMES[len(spatial)]
    order = [len(spatial) - 2] + [a for a in range(len(spatial)) if a != len(spatial) - 2]  # Y first
    best: tuple[tuple[int, int], int, slice, slice, str] | None = None
    for axis in order:
        n = spatial[axis]
        k = int(round(n * fraction))
        least = MIN_HELD_OUT["z" if names[axis] == "Z" else "plane"]
        if k < least or n - k < least:
            continue
        for held, kept, end in ((slice(n - k, n), slice(0, n - k), "last"), (slice(0, k), slice(k, n), "first")):
            cv = _class_counts(classes[(slice(None),) * axis + (held,)])
            ct = _class_counts(classes[(slice(None),) * axis + (kept,)])
            m = max(len(cv), len(ct))
            cv, ct = np.pad(cv, (0, m - len(cv))), np.pad(ct, (0, m - len(ct)))
            score = (int(((cv > 0) & (ct > 0)).sum()), int(cv.sum() - cv.max()) if cv.any() else 0)
            if best is None or score > best[0]:
                best = (score, axis, held, kept, end)
    if best is None:
        return [s], [s], "none held out (one small image): validated on the training image"
    (shared, _), axis, held, kept, end = best
    k = held.stop - held.start
    where = f"{end} {k} {'slices' if names[axis] == 'Z' else 'pixels'} along {names[axis]}"
    note = f"the {where} of the one image ({shared} classes in both parts)"
    axis_from_end = axis - len(spatial)
    return [s.window(kept, axis_from_end)], [s.window(held, axis_from_end)], note


def _class_counts(classes: np.ndarray) -> np.ndarray:
    """Pixels per class index (unlabelled pixels, below 0, left out)."""
    flat = classes.ravel()
    return np.bincount(flat[flat >= 0].astype(np.int64))


def pad_end(x: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """``(C, *spatial)`` padded at the end of each spatial axis up to ``patch`` (reflected, or the edge
    repeated where the image is too small to reflect); unchanged where it is large enough."""
    spatial = x.shape[1:]
    extra = [max(0, p - n) for p, n in zip(patch, spatial)]
    if not any(extra):
        return x
    mode = "reflect" if all(e < n for e, n in zip(extra, spatial)) else "edge"
    return np.pad(x, [(0, 0)] + [(0, e) for e in extra], mode=mode)  # type: ignore[call-overload]


def pad_to(s: Sample, patch: tuple[int, ...]) -> Sample:
    """Pad a sample at the end of each spatial axis up to ``patch``; padded targets are ``IGNORE``."""
    spatial = s.x.shape[1:]
    extra = [max(0, p - n) for p, n in zip(patch, spatial)]
    if not any(extra):
        return s
    lead = [(0, 0)] * (s.y.ndim - len(spatial))
    y = np.pad(s.y, lead + [(0, e) for e in extra], constant_values=IGNORE)
    return Sample(pad_end(s.x, patch), Targets(y, s.truth.classes, s.truth.ids))
