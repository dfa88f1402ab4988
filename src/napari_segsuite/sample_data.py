"""Generated sample data with ground truth, deterministic from a seed (nothing is downloaded).

- :func:`nuclei_2d`: fluorescence-like nuclei, touching, of varied size, on an uneven background
  with noise; instance and semantic ground truth.
- :func:`nuclei_3d`: the same as a ``(Z, Y, X)`` volume of ellipsoids.
- :func:`rgb_scene`: an RGB image with three object classes (disks, squares, triangles).

Label conventions: 0 is background; instance images hold one id (1..N) per object; semantic images
hold the class id per pixel. The napari ``sample_data`` contributions and ``segsuite sample`` use these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

SCENE_CLASSES = ("background", "disk", "square", "triangle")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (f - f.mean()) / (f.std() + 1e-8)


def _place_ellipsoids(
    rng: np.random.Generator, shape: tuple[int, ...], n: int, r_range: tuple[float, float], z_scale: float = 1.0
) -> np.ndarray:
    """Instance ids of ``n`` ellipses/ellipsoids; touching ones split by normalised distance."""
    ndim = len(shape)
    best = np.full(shape, np.inf, dtype=np.float32)
    inst = np.zeros(shape, dtype=np.int32)
    centers: list[np.ndarray] = []
    radii_list: list[float] = []
    scale = np.array([z_scale] + [1.0] * (ndim - 1)) if ndim == 3 else np.ones(ndim)
    label = 0
    for _ in range(n * 20):
        if label >= n:
            break
        r = rng.uniform(*r_range)
        c = rng.uniform(0, 1, ndim) * np.array(shape)
        # allow touching and slight overlap, not full occlusion
        if any(np.linalg.norm((c - c2) / scale) < 0.75 * (r + r2) for c2, r2 in zip(centers, radii_list)):
            continue
        label += 1
        centers.append(c)
        radii_list.append(r)
        axes = np.array([r * rng.uniform(0.7, 1.0), r * rng.uniform(1.0, 1.3)])
        if ndim == 3:
            axes = np.array([r * z_scale, *axes])
        theta = rng.uniform(0, np.pi)
        lo = np.maximum(np.floor(c - axes.max() - 1).astype(int), 0)
        hi = np.minimum(np.ceil(c + axes.max() + 2).astype(int), shape)
        if np.any(hi <= lo):
            label -= 1
            centers.pop()
            radii_list.pop()
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        d = [g - ci for g, ci in zip(grids, c)]
        y, x = d[-2], d[-1]
        u = np.cos(theta) * y + np.sin(theta) * x
        v = -np.sin(theta) * y + np.cos(theta) * x
        dist = (u / axes[-2]) ** 2 + (v / axes[-1]) ** 2
        if ndim == 3:
            dist = dist + (d[0] / axes[0]) ** 2
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = (dist < 1) & (dist < best[sl])
        best[sl][win] = dist[win]
        inst[sl][win] = label
    # relabel 1..N in case an object vanished under its neighbours
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(inst.max() + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[inst]


def _render_fluorescence(rng: np.random.Generator, inst: np.ndarray) -> np.ndarray:
    """uint16 image: textured bright objects, uneven background, blur, shot and read noise."""
    shape = inst.shape
    n = int(inst.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n)])
    signal = brightness[inst] * (1 + 0.15 * _smooth_noise(rng, shape, 2.0))
    signal = ndi.gaussian_filter(signal, 1.0)
    illum = 1 + 0.35 * _smooth_noise(rng, shape, max(shape) / 4)
    background = 0.12 + 0.06 * _smooth_noise(rng, shape, max(shape) / 6)
    img = (signal + background) * illum
    img = np.clip(img, 0, None) * 1500
    img = rng.poisson(img).astype(np.float32) + rng.normal(100, 12, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def nuclei_2d(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    n: int | None = None,
    radius: tuple[float, float] = (5.0, 15.0),
) -> dict[str, np.ndarray]:
    """One 2D nuclei image with ground truth (nuclei of ``radius`` pixels, min and max, many touching).

    Returns:
        ``{"image": (Y, X) uint16, "instances": (Y, X) int32 ids 1..N (0 background),
        "semantic": (Y, X) uint8 (0 background, 1 nucleus)}``.
    """
    rng = np.random.default_rng(seed)
    if n is None:
        n = int(shape[0] * shape[1] / 1500)
    inst = _place_ellipsoids(rng, shape, n, radius)
    return {"image": _render_fluorescence(rng, inst), "instances": inst, "semantic": (inst > 0).astype(np.uint8)}


def nuclei_3d(
    seed: int = 0, shape: tuple[int, int, int] = (32, 128, 128), n: int | None = None
) -> dict[str, np.ndarray]:
    """A ``(Z, Y, X)`` nuclei volume with ground truth (same keys and dtypes as :func:`nuclei_2d`)."""
    rng = np.random.default_rng(seed)
    if n is None:
        n = int(np.prod(shape) / 25000)
    inst = _place_ellipsoids(rng, shape, n, (6.0, 13.0), z_scale=0.6)
    return {"image": _render_fluorescence(rng, inst), "instances": inst, "semantic": (inst > 0).astype(np.uint8)}


def rgb_scene(seed: int = 0, shape: tuple[int, int] = (256, 256), n: int = 14) -> dict[str, np.ndarray]:
    """An RGB scene of disks, squares and triangles (classes 1, 2, 3) on a textured background.

    Returns:
        ``{"image": (Y, X, 3) uint8, "instances": (Y, X) int32, "semantic": (Y, X) uint8,
        "classes": (N + 1,) uint8 class of each instance id (index 0 is background)}``.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inst = np.zeros(shape, np.int32)
    classes = [0]
    palette = np.array([[70, 60, 50], [200, 70, 60], [70, 170, 80], [80, 90, 210]], np.float32)
    for i in range(1, n + 1):
        cls = int(rng.integers(1, 4))
        r = rng.uniform(8, 26)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        if cls == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        elif cls == 2:
            mask = (np.abs(yy - cy) < r * 0.85) & (np.abs(xx - cx) < r * 0.85)
        else:
            mask = (yy - cy > -r) & (yy - cy < r) & (np.abs(xx - cx) < (yy - cy + r) * 0.55)
        inst[mask] = i  # later objects occlude earlier ones
        classes.append(cls)
    cls_of = np.array(classes, np.uint8)
    ids = np.unique(inst)
    lut = np.zeros(n + 1, np.int32)
    lut[ids[ids > 0]] = np.arange(1, (ids > 0).sum() + 1)
    new_classes = np.zeros((ids > 0).sum() + 1, np.uint8)
    new_classes[lut[ids[ids > 0]]] = cls_of[ids[ids > 0]]
    inst = lut[inst]
    semantic = new_classes[inst]
    tint = 1 + 0.25 * rng.standard_normal((len(new_classes), 3))
    tint[0] = 1
    img = palette[semantic] * tint[inst]
    img *= (1 + 0.2 * _smooth_noise(rng, shape, 12.0))[..., None]
    img += rng.normal(0, 14, img.shape)
    return {
        "image": np.clip(img, 0, 255).astype(np.uint8),
        "instances": inst,
        "semantic": semantic.astype(np.uint8),
        "classes": new_classes,
    }


def shapes_multiclass(seed: int = 0, shape: tuple[int, int] = (96, 96)) -> dict[str, np.ndarray]:
    """A grayscale 3-class task with objects at several sizes: bright disks (class 1) and dark
    squares (class 2) of radius 3..16 px on a noisy, unevenly lit background (class 0).

    Returns:
        ``{"image": (Y, X) float32, "semantic": (Y, X) uint8}``.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sem = np.zeros(shape, np.uint8)
    for _ in range(int(h * w / 900)):
        r = float(np.exp(rng.uniform(np.log(3), np.log(16))))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            sem[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
        else:
            sem[(np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)] = 2
    level = np.array([0.5, 0.85, 0.2], np.float32)
    img = level[sem] + 0.08 * _smooth_noise(rng, shape, 1.5)
    img *= 1 + 0.2 * _smooth_noise(rng, shape, h / 3)
    img += rng.normal(0, 0.05, shape)
    return {"image": img.astype(np.float32), "semantic": sem}


_SUBS = ("images", "semantic", "instances")


def write_samples(out: str | Path, n_images: int = 8, seed: int = 0, *, overwrite: bool = False) -> dict[str, Path]:
    """Write every sample kind as TIFF files under ``out``, ready for ``segsuite train``.

    Layout: ``out/<kind>/{images,semantic,instances}/<kind>_NNN.tif`` for kinds ``nuclei2d``
    (``n_images`` images), ``nuclei3d`` (2 volumes) and ``scene_rgb`` (``n_images`` images).

    Returns:
        The folder of each kind.

    Raises:
        ValueError: ``n_images`` is under 1, ``out`` is a file, or (without ``overwrite``) one of the
            files exists already; checked before anything is written.
    """
    import tifffile

    out = Path(out)
    if n_images < 1:
        raise ValueError(f"--n must be at least 1 image (got {n_images}).")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; give a folder (it is created if needed).")
    plan: list[tuple[str, Any, int]] = [
        ("nuclei2d", nuclei_2d, n_images),
        ("nuclei3d", nuclei_3d, 2),
        ("scene_rgb", rgb_scene, n_images),
    ]
    files = [out / k / sub / f"{k}_{i:03d}.tif" for k, _, n in plan for i in range(n) for sub in _SUBS]
    there = [f for f in files if f.exists() or f.parent.is_file()]
    if there and not overwrite:
        raise ValueError(
            f"{str(there[0])!r} exists already ({len(there)} sample file(s) in all); choose another --out "
            "folder, or add --overwrite to replace them (nothing was written)."
        )
    made: dict[str, Path] = {}
    for kind, fn, count in plan:
        for sub in _SUBS:
            (out / kind / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            s = fn(seed=seed + i)
            name = f"{kind}_{i:03d}.tif"
            for sub in _SUBS:
                tifffile.imwrite(out / kind / sub / name, s["image" if sub == "images" else sub])
        made[kind] = out / kind
    return made


# --- napari sample_data contributions (LayerData tuples; no napari import needed) ---------------


def _layers(kind: str, s: dict[str, np.ndarray], rgb: bool = False) -> list[tuple]:
    return [
        (s["image"], {"name": kind, "rgb": rgb} if rgb else {"name": kind}, "image"),
        (s["semantic"], {"name": f"{kind} ground truth (semantic)", "visible": False}, "labels"),
        (s["instances"], {"name": f"{kind} ground truth (instances)", "visible": False}, "labels"),
    ]


def napari_nuclei_2d() -> list[tuple]:
    return _layers("nuclei 2D", nuclei_2d(seed=0, shape=(384, 384)))


def napari_nuclei_3d() -> list[tuple]:
    return _layers("nuclei 3D", nuclei_3d(seed=0))


def napari_rgb_scene() -> list[tuple]:
    return _layers("RGB scene", rgb_scene(seed=0), rgb=True)


def panoptic_scene(seed: int = 0, shape: tuple[int, int] = (128, 128)) -> dict[str, Any]:
    """A grayscale panoptic scene: a stuff class besides background and two countable thing classes.

    Classes: 0 background (dark, smooth; stuff), 1 tissue (a large region with a striped texture;
    stuff), 2 cell (bright round objects; thing), 3 rod (dimmer elongated bars; thing). Cells and
    rods lie on background and tissue alike, several of them touching; each object has a slightly
    darker rim and its own brightness.

    Returns:
        ``{"image": (Y, X) uint16, "semantic": (Y, X) uint8 class per pixel, "instances": (Y, X)
        int32 ids 1..N of things (0 on stuff), "thing_classes": (2, 3), "class_names": names}``.
    """

    def paint(
        rng: np.random.Generator, shape: tuple[int, int], n_cells: int, n_rods: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Instance ids and per-id classes (2 round cell, 3 rod) of touching disks and rotated bars.

        Each pixel goes to the object whose normalised distance (< 1 inside) is smallest, so
        touching objects split along a clean border instead of one hiding the other.
        """
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        best = np.full(shape, np.inf, np.float32)
        inst = np.zeros(shape, np.int32)
        kinds = [2] * n_cells + [3] * n_rods
        rng.shuffle(kinds)
        placed: list[tuple[float, float, float]] = []
        classes = [0]
        for kind in kinds:
            for _ in range(30):
                if kind == 2:
                    a = b = rng.uniform(5.0, 8.5)
                else:
                    a, b = rng.uniform(4.0, 5.5), rng.uniform(9.0, 12.0)
                if placed and rng.random() < 0.35:  # next to an earlier object: touching neighbours
                    py, px, pr = placed[int(rng.integers(len(placed)))]
                    phi, d = rng.uniform(0, 2 * np.pi), 0.95 * (pr + min(a, b))
                    cy, cx = py + d * np.sin(phi), px + d * np.cos(phi)
                    if not (a + 2 < cy < h - a - 2 and a + 2 < cx < w - a - 2):
                        continue
                else:
                    cy, cx = rng.uniform(a + 2, h - a - 2), rng.uniform(a + 2, w - a - 2)
                # touching and a little overlap are allowed, burying an object is not
                if all(np.hypot(cy - py, cx - px) > 0.8 * (min(a, b) + pr) for py, px, pr in placed):
                    break
            else:
                continue
            theta = rng.uniform(0, np.pi)
            u = np.cos(theta) * (yy - cy) + np.sin(theta) * (xx - cx)
            v = -np.sin(theta) * (yy - cy) + np.cos(theta) * (xx - cx)
            dist = np.hypot(u / a, v / b) if kind == 2 else np.maximum(np.abs(u) / a, np.abs(v) / b)
            win = (dist < 1) & (dist < best)
            best[win] = dist[win]
            classes.append(kind)
            inst[win] = len(classes) - 1
            placed.append((cy, cx, min(a, b)))
        ids = np.unique(inst)
        ids = ids[ids > 0]
        lut = np.zeros(len(classes), np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        return lut[inst], np.concatenate([[0], np.asarray(classes)[ids]]).astype(np.uint8)

    rng = np.random.default_rng(seed)
    h, w = shape
    area = h * w
    tissue = _smooth_noise(rng, shape, max(h, w) / 6) > rng.uniform(-0.2, 0.4)
    inst, cls_of = paint(rng, shape, n_cells=max(1, round(area / 2300)), n_rods=max(1, round(area / 3600)))
    semantic = np.where(inst > 0, cls_of[inst], tissue.astype(np.uint8)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((np.cos(angle) * yy + np.sin(angle) * xx) * 2 * np.pi / 5.0)
    level = np.array([0.1, 0.33, 1.0, 0.6], np.float32)
    img = level[semantic] + np.where(semantic == 1, 0.08 * stripes, 0.0)
    brightness = np.concatenate([[1.0], rng.uniform(0.9, 1.1, int(inst.max()))]).astype(np.float32)
    inside = ndi.distance_transform_edt(inst > 0) if inst.any() else np.zeros(shape)
    # a darker rim where an object meets anything else, touching neighbours included
    border = np.zeros(shape, bool)
    border[:-1] |= inst[:-1] != inst[1:]
    border[1:] |= inst[1:] != inst[:-1]
    border[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    border[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    rim = np.minimum(ndi.distance_transform_edt(~border), inside) if inst.any() else inside
    img = np.where(inst > 0, img * brightness[inst] * (0.8 + 0.2 * np.clip(rim / 1.5, 0, 1)), img)
    img = ndi.gaussian_filter(img, 0.8) * (1 + 0.15 * _smooth_noise(rng, shape, max(h, w) / 3))
    img = img + 0.04 * _smooth_noise(rng, shape, 1.0) + rng.normal(0, 0.03, shape)
    return {
        "image": np.clip(img * 2000 + 100, 0, 65535).astype(np.uint16),
        "semantic": semantic,
        "instances": inst.astype(np.int32),
        "thing_classes": (2, 3),
        "class_names": ("background", "tissue", "cell", "rod"),
    }
