"""Instance segmentation: one id per object (0 background, 1..N objects), unique in the image.

The representation the ``unet-instance`` model learns (chosen because it learns from a few dozen
objects in minutes on a CPU and needs no shape prior): three classes per pixel, background (0),
object interior (1) and object boundary (2, a 2-pixel ring inside each object). Touching
objects are then separated by a seeded watershed on the distance to the interior's edge (see
:func:`postprocess`). Cellpose-style flows separate touching, irregular
cells better; StarDist's star-convex polygons suit round nuclei; both cost more to learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import find_boundaries, watershed

from ..models.base import ObjectModel
from . import register_task
from .ap import ObjectMetric, match, metrics, metrics_from_matches, relabel
from .base import IGNORE, UNANNOTATED, Segmentation, Targets, Task, check_ids, check_known
from .distance import distance_loss, distance_targets, split_by_distance
from .objects import MIN_SIZE, Obj, floor_size, link_slices, objects_from_masks, paste, speck_size, z_ratio

if TYPE_CHECKING:
    from ..card import ModelCard
    from ..model_files import SegModel
    from ..models.registry import ModelSpec

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: The map after the three class probabilities in models that predict a distance map (:mod:`.distance`).
DISTANCE = 3
BOUNDARY_WIDTH = 2


def targets(
    instances: np.ndarray, boundary_width: int = BOUNDARY_WIDTH, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """3-class targets from an instance image or volume: 0 background, 1 interior, 2 boundary (int64).

    The boundary is the ring of each object's pixels within ``boundary_width`` of another label
    (background or a neighbour): wide enough that touching objects leave separate interiors. Small
    objects (under :data:`SMALL_DIAMETER` pixels across) get a one-pixel ring, so a nucleus of 5 px
    keeps an interior. In a volume whose slices are at least twice as thick as its pixels are wide
    (``spacing`` ``(Z, Y, X)``), the ring is widened in Y/X only, so a nucleus a few slices thick
    keeps an interior too.
    """
    inst = np.asarray(instances)
    t = (inst > 0).astype(np.int64)
    edge = find_boundaries(inst, mode="inner")
    if boundary_width > 1:
        structure = ndi.generate_binary_structure(inst.ndim, 1)
        if inst.ndim == 3 and z_ratio(spacing) >= 2:
            structure[0] = structure[2] = False  # in-plane only
        wide = ndi.binary_dilation(edge, structure=structure, iterations=boundary_width - 1)
        edge = edge | (wide & ~_small_objects(inst))
    t[edge & (inst > 0)] = BOUNDARY
    return t


#: Objects narrower than this (pixels across, as a disk of the same area per slice) get a 1-px ring.
SMALL_DIAMETER = 12.0


def _small_objects(inst: np.ndarray) -> np.ndarray:
    """Pixels of objects whose equivalent diameter (per slice for volumes) is under :data:`SMALL_DIAMETER`."""
    if inst.max() == 0:
        return np.zeros(inst.shape, bool)
    sizes = np.bincount(inst.ravel()).astype(np.float64)
    if inst.ndim == 3:  # area per slice the object spans
        spans = np.zeros_like(sizes)
        for z in range(inst.shape[0]):
            spans[np.unique(inst[z])] += 1
        sizes = sizes / np.maximum(spans, 1)
    small = 2 * np.sqrt(sizes / np.pi) < SMALL_DIAMETER
    small[0] = False
    return small[inst]


def postprocess(
    probs: np.ndarray,
    *,
    min_size: int | None = None,
    interior_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    seed_h: float = 0.5,
    seed_threshold: float | None = None,
    dist_h: float = 0.1,
    use_distance: bool = True,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Object ids 1..N (int32) from ``(3, H, W)`` / ``(3, Z, H, W)`` class probabilities, or ``(4, ...)``
    with the predicted distance map (:mod:`.distance`) after them, by seeded watershed.

    With a distance map, seeds are its h-maxima of depth ``dist_h`` (or, for models calibrated before
    those, the regions where it exceeds ``seed_threshold``) and objects grow down it within the
    predicted foreground (:func:`~.distance.split_by_distance`). Without one, seeds are the h-maxima of the (lightly
    smoothed) distance to the edge of the predicted interior, so two touching objects whose
    interiors the network joined by a thin bridge still get a seed each; the watershed then floods
    ``-distance`` within the predicted foreground.

    Args:
        interior_threshold: Interior probability a pixel needs to count as interior (3 maps).
        mask_threshold: Object (interior + boundary) probability a pixel needs to be part of an object.
        seed_h: Minimum depth (pixels of distance) of a maximum to seed its own object; larger merges more (3 maps).
        dist_h: How far a maximum of the predicted normalised distance must rise above the pass to a
            higher one to seed its own object; larger merges more (4 maps).
        seed_threshold: Seed from the regions where the predicted distance exceeds this instead (4 maps).
        use_distance: With 4 maps, seed from the distance map; ``False``: as with 3 maps (calibration
            chooses this where the distance map has not been learnt well enough yet).
        min_size: Objects smaller than this (pixels or voxels) are dropped; never fewer than
            :func:`~.objects.floor_size` for the maps' dimension.
        spacing: Voxel size ``(Z, Y, X)`` of a volume: distances are measured in Y/X pixel widths, so
            thick slices count as thick.
    """
    foreground = (1.0 - probs[BACKGROUND]) > mask_threshold
    if probs.shape[0] > DISTANCE and use_distance:
        if not foreground.any():
            return np.zeros(foreground.shape, np.int32)
        labels, n = split_by_distance(foreground, probs[DISTANCE], seed_threshold, dist_h, z_ratio(spacing))
        mask = foreground
    else:
        interior = probs[INTERIOR] > interior_threshold
        if not interior.any():
            return np.zeros(interior.shape, np.int32)
        sampling: tuple[float, ...] | None = None
        sigma: float | tuple[float, ...] = 1.0
        if interior.ndim == 3 and z_ratio(spacing) > 1:
            r = z_ratio(spacing)
            sampling, sigma = (r, 1.0, 1.0), (1.0 / r, 1.0, 1.0)
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(interior, sampling=sampling), sigma)
        seeds, n = ndi.label(h_maxima(dist, seed_h) & interior)
        mask = foreground | interior
        labels = watershed(-dist, seeds, mask=mask)
    # a small object the network drew all as boundary has no interior to seed it: it is an object too
    rest, n_rest = ndi.label(mask & (labels == 0))
    if n_rest:
        labels = np.where(rest > 0, rest + n, labels)
    return relabel(remove_small(labels, max(min_size or 0, floor_size(labels.ndim, spacing))))


#: Post-processing settings of map models, and the grid :meth:`InstanceTask.calibrate` searches.
DEFAULT_SETTINGS: dict[str, float] = {"interior_threshold": 0.5, "seed_h": 0.5}
CALIBRATION_GRID = {"interior_threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "seed_h": (0.25, 0.5, 1.0, 2.0)}
#: The same for models with a distance map; their calibration searches both grids (the three-map
#: post-processing with ``use_distance`` off).
DISTANCE_SETTINGS: dict[str, float] = {"mask_threshold": 0.5, "dist_h": 0.1}
DISTANCE_GRID = {"mask_threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "dist_h": (0.05, 0.1, 0.2, 0.3)}


#: Weight of AP50:95 beside AP50 in calibration: small enough that finding one object more (1/N of
#: AP50 among N objects) outweighs the usual differences in outline between settings (a few
#: hundredths of AP50:95) on validation sets of up to ~100 objects; it decides among settings that
#: find the same objects.
BOUNDARY_WEIGHT = 0.1

#: A setting replaces the defaults in calibration only where it scores better by more than this many
#: objects' worth of AP50 (this many over the validation objects): on one image's few dozen objects
#: a gain of one object is noise. Four real-nuclei models trained on one half of an image: the
#: setting chosen by a gain of one object or less scored AP50 -0.031, +0.016, -0.017 and -0.016 against
#: the defaults on the other half.
CALIBRATION_MARGIN_OBJECTS = 2.0


def has_distance(card: ModelCard) -> bool:
    """Whether a map model predicts the distance map (:mod:`.distance`) after its three classes.
    Models saved before it existed (and object models, whose builders take no ``distance``) have
    none in their card and predict three maps."""
    return bool(card.build.get("distance", False))


def _grid(values: dict[str, tuple[float, ...]], **fixed: Any) -> list[dict[str, Any]]:
    (key_a, values_a), (key_b, values_b) = values.items()
    return [{**fixed, key_a: a, key_b: b} for a in values_a for b in values_b]


def _candidates(card: ModelCard) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The default post-processing settings of ``card`` and those calibration tries.

    Native 3D models with a distance map also try three-map seeding (a short 3D run may not have
    learnt the map yet: 75 steps on generated nuclei, AP50 0.94 that way, 0.81 at best from the map).
    2D ones do not: on three models trained 261-500 steps on half of a real nuclei image, the
    three-map seeding won on the validation slab every time and lost on the held-out half every
    time (AP50 0.918 / 0.887 / 0.857, against 0.966 / 0.902 / 0.966 choosing among the map's settings).
    """
    if not has_distance(card):
        return DEFAULT_SETTINGS, _grid(CALIBRATION_GRID)
    fallback = _grid(CALIBRATION_GRID, use_distance=False) if card.spatial_dims == 3 else []
    return DISTANCE_SETTINGS, _grid(DISTANCE_GRID) + fallback


def _settings(card: ModelCard, ndim: int) -> dict[str, Any]:
    """Keyword arguments of :func:`postprocess` for maps of ``ndim`` axes from ``card``."""
    known = {*DEFAULT_SETTINGS, *DISTANCE_SETTINGS, "seed_threshold", "use_distance", "min_size"}
    kinds = {"use_distance": bool, "min_size": int}
    chosen = {k: kinds.get(k, float)(v) for k, v in card.postprocessing.items() if k in known}
    return {**chosen, "spacing": card.voxel_size if ndim == 4 else None}


def _is_object_model(card: ModelCard) -> bool:
    from ..models import get_spec

    try:
        return bool(get_spec(card.architecture).objects)
    except KeyError:
        return False


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


class InstanceTask(Task):
    """One id per object. Map models (``unet-instance``) learn background / interior / boundary and
    are split by watershed; object models (:class:`~napari_segsuite.models.base.ObjectModel`) learn
    objects directly, optionally with a class per object."""

    name = "instance"
    score_name = "AP50"
    gives_classes = False
    gives_ids = True
    score_key = "ap50"

    def new_model(
        self,
        spec: ModelSpec,
        labels: Sequence[np.ndarray],
        *,
        in_channels: int,
        sparse: bool,
        instances: Sequence[np.ndarray] | None,
        things: Sequence[int] | None,
        build: dict[str, Any],
        ignore_value: int | None = None,
    ) -> SegModel:
        from ..model_files import new_model
        from ..models import available
        from ..preprocess import LabelMap

        check_ids(labels if instances is None else instances)
        unannotated = UNANNOTATED if sparse else None
        build = {**build, "ignore_value": ignore_value} if ignore_value is not None else build
        if not spec.objects:
            if instances is not None:
                raise ValueError(
                    f"{spec.name!r} finds objects of one class; for a class per object pick an object model "
                    f"({', '.join(s.name for s in available(self.name) if s.objects)})."
                )
            model = new_model(
                spec.name,
                label_values=[0, 1, 2],
                class_names=["background", "interior", "boundary"],
                in_channels=in_channels,
                unannotated_value=unannotated,
                **build,
            )
            specks = MIN_SIZE if sparse else speck_size(labels)  # sparse: objects only partly painted
            if specks > MIN_SIZE:
                model.card.postprocessing = {"min_size": float(specks)}
            return model
        if instances is None:
            return new_model(
                spec.name,
                label_values=[0, 1],
                class_names=["background", "object"],
                in_channels=in_channels,
                unannotated_value=unannotated,
                **build,
            )
        if sparse:
            raise ValueError("Sparse labels with a class per object are not supported yet; label whole images.")
        values = sorted(set(LabelMap.from_labels(list(labels), ignore=ignore_value).values) | {0})
        return new_model(spec.name, label_values=values, in_channels=in_channels, **build)

    def targets(
        self,
        model: SegModel,
        labels: np.ndarray,
        instances: np.ndarray | None,
        *,
        per_slice: bool,
        name: str,
        strict: bool = True,
    ) -> Targets:
        from ..preprocess import LabelMap

        lab = np.asarray(labels)
        cls_values = None if instances is None else lab  # one class: the labels are the object ids
        ids = np.asarray(lab if instances is None else instances).astype(np.int64)
        if cls_values is not None and strict:
            check_known(model, cls_values, name)
        unlabelled = ignored = None
        if strict and model.card.unannotated_value is not None:  # training's sparse rule: 0 not annotated, 1 background
            unlabelled = ids == 0
            ids = np.where(ids >= 2, ids - 1, np.where(unlabelled, IGNORE, 0))
        if model.card.ignore_value is not None:  # a declared ignore value: no object, no class, no loss
            ignored = lab == model.card.ignore_value
            ids = np.where(ignored, IGNORE, ids)
            unlabelled = ignored if unlabelled is None else unlabelled | ignored
        if isinstance(model.module, ObjectModel):  # ids + a class per pixel of each object
            if cls_values is None:
                cls = np.where(ignored, IGNORE, ids > 0) if ignored is not None else (ids > 0).astype(np.int64)
            else:
                cls = LabelMap.of_card(model.card).to_classes(cls_values)
                cls = np.where(ids > 0, cls, np.where((cls == IGNORE) | (ids == IGNORE), IGNORE, 0))
            return Targets(y=np.stack([ids, cls]), classes=cls, ids=ids)
        known = np.maximum(ids, 0)  # background / interior / boundary
        spacing = model.card.voxel_size
        y = np.stack([targets(sl) for sl in known]) if per_slice else targets(known, spacing=spacing)
        if unlabelled is not None:
            y[unlabelled] = IGNORE
        if not has_distance(model.card):
            return Targets(y=y, classes=y, ids=ids)
        dist = distance_targets(known, per_slice, spacing)
        if unlabelled is not None:
            dist[unlabelled] = IGNORE
        return Targets(y=np.stack([y, dist]), classes=y, ids=ids)

    def object_ids(
        self, labels: Sequence[np.ndarray], instances: Sequence[np.ndarray] | None
    ) -> Sequence[np.ndarray] | None:
        return labels if instances is None else instances  # without ``instances`` the labels are the ids

    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, card: ModelCard) -> torch.Tensor:
        if isinstance(module, ObjectModel):
            return module.loss(x, y)
        from .semantic import loss_fn

        out = module(x)
        if not has_distance(card):
            return loss_fn(out, y)
        return loss_fn(out[:, :DISTANCE], y[:, 0]) + distance_loss(out[:, DISTANCE], y[:, 1])

    def output_channels(self, card: ModelCard) -> int:
        return card.num_classes + int(has_distance(card))

    def activate(self, out: torch.Tensor, card: ModelCard) -> torch.Tensor:
        """Softmax over the three classes; a sigmoid on the distance map where there is one."""
        out = out.float()
        if not has_distance(card):
            return out.softmax(1)
        return torch.cat([out[:, :DISTANCE].softmax(1), out[:, DISTANCE:].sigmoid()], 1)

    def postprocess(self, maps: np.ndarray, card: ModelCard) -> Segmentation:
        return Segmentation(instances=postprocess(maps, **_settings(card, maps.ndim)))

    def wants_calibration(self, card: ModelCard) -> bool:
        return card.num_classes == 3 and not _is_object_model(card)

    def calibrate(self, maps: list[np.ndarray], truths: list[Targets], card: ModelCard) -> dict[str, Any]:
        """Map models: the post-processing settings (interior threshold and seed depth; with a
        distance map also the mask threshold and seed depth of seeding from it) that give the best
        AP50 on the validation images, ties broken by AP50:95 (:data:`BOUNDARY_WEIGHT`); kept only
        where they beat the defaults by more than :data:`CALIBRATION_MARGIN_OBJECTS` objects' worth.
        Native 3D models with a distance map try three-map seeding too (:func:`_candidates`)."""
        if not self.wants_calibration(card) or not maps:
            return {}
        defaults, candidates = _candidates(card)
        kept = {k: v for k, v in card.postprocessing.items() if k == "min_size"}  # from the labels, not chosen here
        scored, n_true = [], 0
        floor = int(kept["min_size"]) if kept else None  # None: the dimension's own floor
        for settings in candidates:
            metric = ObjectMetric()
            for m, t in zip(maps, truths):
                spacing = card.voxel_size if m.ndim == 4 else None
                metric.update(Segmentation(instances=postprocess(m, spacing=spacing, min_size=floor, **settings)), t)
            found, n_true = metric.compute(), int(metric.n_true)
            # AP50 first; among settings that find the same objects, the tighter outlines (a user
            # corrects outlines too, and AP50 alone cannot tell a mask a pixel too wide)
            scored.append((settings, float(found["ap50"]) + BOUNDARY_WEIGHT * float(found["ap50_95"] or 0.0)))
        # the defaults win unless beaten by more than a few objects: the validation set is small
        margin = max(0.005, CALIBRATION_MARGIN_OBJECTS / max(n_true, 1))
        best = max(scored, key=lambda r: r[1] + (margin if r[0] == defaults else 0.0))[0]
        card.postprocessing = {**kept, **({} if best == defaults else best)}
        return dict(card.postprocessing)

    def metric(self, card: ModelCard) -> ObjectMetric:
        return ObjectMetric()


register_task(InstanceTask())

__all__ = [
    "InstanceTask",
    "Obj",
    "ObjectMetric",
    "link_slices",
    "match",
    "metrics",
    "metrics_from_matches",
    "objects_from_masks",
    "paste",
    "postprocess",
    "relabel",
    "remove_small",
    "targets",
]
