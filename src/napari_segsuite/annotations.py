"""Polygon annotations of labelling tools as instance label images (one id per object).

- **labelme**: one JSON per image, ``shapes`` of ``polygon``, ``rectangle`` or ``circle`` with
  ``points`` in pixel coordinates, and ``imageHeight``/``imageWidth``.
- **COCO** (CVAT, Label Studio, Roboflow exports): one JSON for many images, ``images`` with
  ``file_name``, ``height`` and ``width``, and ``annotations`` whose ``segmentation`` is a list of
  polygons (``[x1, y1, x2, y2, ...]``) or an uncompressed run-length encoding (``counts`` a list).
  Crowd regions (``iscrowd: 1``) are left out, as COCO's own scoring leaves them.

Polygons are filled as labelme fills them (Pillow's polygon fill, outline included); objects are
numbered 1..N in the file's order, a later object painting over an earlier one where they overlap.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _load(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{Path(path).name!r} is not a readable JSON file ({err}).") from None
    if not isinstance(data, dict) or not ("shapes" in data or "annotations" in data):
        raise ValueError(
            f"{Path(path).name!r} is neither a labelme file ('shapes') nor a COCO file ('annotations'); "
            "give polygons in one of those two forms."
        )
    return data


def coco_image_names(path: str | Path) -> list[str] | None:
    """The image file names a COCO file annotates (``None`` for a labelme file, which annotates one)."""
    data = _load(path)
    if "annotations" not in data:
        return None
    return [Path(str(im.get("file_name", ""))).name for im in data.get("images", [])]


def read_polygons(path: str | Path, image: str | Path | None = None) -> np.ndarray:
    """An instance label image (int32, 0 background, 1..N objects) from a labelme or COCO JSON file.

    Args:
        image: The image the labels are for: picks the COCO ``images`` entry by file name (or name
            without extension); not needed for labelme files or a COCO file of one image.

    Raises:
        ValueError: not labelme or COCO, the image is not in the file, or the size is not stated.
    """
    data = _load(path)
    name = Path(path).name
    if "shapes" in data:
        h, w = data.get("imageHeight"), data.get("imageWidth")
        if not h or not w:
            raise ValueError(f"{name!r} does not give imageHeight and imageWidth.")
        shapes = [(s.get("shape_type") or "polygon", s.get("points") or []) for s in data["shapes"]]
        return _paint((int(h), int(w)), shapes, name)
    entry = _coco_image(data, image, name)
    h, w = int(entry["height"]), int(entry["width"])
    out = np.zeros((h, w), np.int32)
    next_id = 1
    for ann in data["annotations"]:
        if ann.get("image_id") != entry.get("id") or ann.get("iscrowd"):
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            mask = _rle(seg, (h, w), name)
        elif isinstance(seg, list) and seg:
            polys = [("polygon", np.asarray(p, float).reshape(-1, 2).tolist()) for p in seg if len(p) >= 6]
            mask = _paint((h, w), polys, name) > 0
        else:
            continue
        out[mask] = next_id
        next_id += 1
    return out


def _coco_image(data: dict[str, Any], image: str | Path | None, name: str) -> dict[str, Any]:
    images = data.get("images") or []
    if image is None:
        if len(images) != 1:
            raise ValueError(f"{name!r} annotates {len(images)} images; say which image the labels are for.")
        return images[0]
    from .io_formats import stem_of

    want = Path(image).name.lower()
    for entry in images:
        file_name = Path(str(entry.get("file_name", ""))).name.lower()
        if file_name == want or stem_of(file_name) == stem_of(want):
            if not entry.get("height") or not entry.get("width"):
                raise ValueError(f"{name!r} does not give the height and width of {file_name!r}.")
            return entry
    raise ValueError(f"{name!r} has no annotations for image {Path(image).name!r}.")


def _paint(shape: tuple[int, int], shapes: list[tuple[str, list]], name: str) -> np.ndarray:
    """Objects 1..N filled from ``(shape_type, points)`` pairs with Pillow, as labelme draws them."""
    from PIL import Image, ImageDraw

    canvas = Image.new("I", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    n = 0
    for kind, points in shapes:
        xy = [tuple(float(v) for v in p[:2]) for p in points]
        if kind == "polygon" and len(xy) >= 3:
            n += 1
            draw.polygon(xy, fill=n, outline=n)
        elif kind == "rectangle" and len(xy) == 2:
            n += 1
            (x0, y0), (x1, y1) = xy
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=n, outline=n)
        elif kind == "circle" and len(xy) == 2:
            n += 1
            (cx, cy), (px, py) = xy
            r = float(np.hypot(px - cx, py - cy))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=n, outline=n)
        else:
            log.warning("%s: a %r shape with %d points is not an area; left out", name, kind, len(xy))
    return np.asarray(canvas, dtype=np.int32)


def _rle(seg: dict[str, Any], shape: tuple[int, int], name: str) -> np.ndarray:
    """A mask from COCO's uncompressed run-length encoding (runs down columns, starting with 0s)."""
    counts = seg.get("counts")
    if not isinstance(counts, list):
        raise ValueError(
            f"{name!r} holds compressed RLE masks; export polygons (or uncompressed RLE) from the labelling tool."
        )
    h, w = (int(v) for v in seg.get("size") or shape)
    flat = np.zeros(h * w, bool)
    pos = 0
    for i, run in enumerate(counts):
        if i % 2:
            flat[pos : pos + int(run)] = True
        pos += int(run)
    return flat.reshape(w, h).T
