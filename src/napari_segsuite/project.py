"""A project folder: the training set (images, labels, objects) and the models trained on it, together.

Layout (all written atomically, so a crash leaves the previous version, never half a file)::

    <project>/project.json        the list of pairs and models, settings
    <project>/images/<name>.tif   each image as it was added
    <project>/labels/<name>.tif   its labels, saved again whenever the user edits them
    <project>/objects/<name>.tif  its object ids (panoptic training), when there are any
    <project>/models/<model>/     models trained on the project (model.safetensors + model.json)

Qt-free: the Fine-tune widget calls these on every edit (debounced); scripts can call them too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import write_text
from .io import read_image, read_labels, write_labels
from .store import safe_name

PROJECT_FILE = "project.json"


@dataclass
class Pair:
    """One training pair of a project, as arrays."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    objects: np.ndarray | None = None


class Project:
    """A project folder (created on first use). ``Project(folder).pairs()`` reopens everything saved."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{str(self.folder)!r} is a file, not a project folder.")
        if self.folder.is_dir() and any(self.folder.iterdir()) and not (self.folder / PROJECT_FILE).is_file():
            raise ValueError(
                f"{str(self.folder)!r} holds other files and is not a segsuite project; pick an empty or new folder."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Any] = {
            "format": 1,
            "pairs": [],
            "models": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if (self.folder / PROJECT_FILE).is_file():
            self.meta = self._read_meta()
        else:
            self._write_meta()

    def _read_meta(self) -> dict[str, Any]:
        """``project.json``, checked: a damaged one is named, never overwritten.

        Raises:
            ValueError: not JSON, or not a segsuite project's list of pairs.
        """
        file = self.folder / PROJECT_FILE
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
            pairs = meta["pairs"]
            ok = isinstance(meta.get("models", []), list) and all(
                isinstance(p, dict) and isinstance(p.get("name"), str) and {"image", "labels"} <= set(p) for p in pairs
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{str(file)!r} is damaged ({type(err).__name__}: {err}); nothing was changed. Restore it from a "
                "backup, or pick another folder for a new project."
            ) from None
        if not ok:
            raise ValueError(
                f"{str(file)!r} is damaged (its list of pairs is not a segsuite project's); nothing was changed. "
                "Restore it from a backup, or pick another folder for a new project."
            )
        meta.setdefault("models", [])
        return meta

    @property
    def models_dir(self) -> Path:
        d = self.folder / "models"
        d.mkdir(exist_ok=True)
        return d

    def names(self) -> list[str]:
        return [p["name"] for p in self.meta["pairs"]]

    def _write_meta(self) -> None:
        self.meta["saved"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_text(self.folder / PROJECT_FILE, json.dumps(self.meta, indent=2))

    def add_pair(self, name: str, image: np.ndarray, labels: np.ndarray, objects: np.ndarray | None = None) -> str:
        """Save a new pair (the image once, the labels now); returns its name in the project (made unique)."""
        base = safe_name(name)
        taken = set(self.names())
        key, i = base, 2
        while key in taken:
            key, i = f"{base}-{i}", i + 1
        write_labels(self.folder / "images" / f"{key}.tif", np.asarray(image))
        entry = {"name": key, "image": f"images/{key}.tif", "labels": f"labels/{key}.tif", "objects": None}
        self.meta["pairs"].append(entry)
        self.save_labels(key, labels, objects)
        return key

    def save_labels(self, name: str, labels: np.ndarray, objects: np.ndarray | None = None) -> None:
        """Save a pair's (edited) labels, and its objects when given; the image is not written again."""
        entry = next((p for p in self.meta["pairs"] if p["name"] == name), None)
        if entry is None:
            raise KeyError(f"No pair named {name!r} in project {str(self.folder)!r}.")
        write_labels(self.folder / entry["labels"], np.asarray(labels))
        if objects is not None:
            entry["objects"] = f"objects/{name}.tif"
            write_labels(self.folder / entry["objects"], np.asarray(objects))
        entry["labelled_fraction"] = float((np.asarray(labels) != 0).mean())
        self._write_meta()

    def remove_pair(self, name: str) -> None:
        """Drop a pair from the set (its files stay in the folder, nothing of the user's is deleted)."""
        self.meta["pairs"] = [p for p in self.meta["pairs"] if p["name"] != name]
        self._write_meta()

    def add_model(self, path: str | Path) -> None:
        self.meta["models"].append(str(Path(path).resolve()))
        self._write_meta()

    def pairs(self) -> list[Pair]:
        """Every saved pair, read back from disk."""
        out = []
        for p in self.meta["pairs"]:
            try:
                objects = read_labels(self._inside(p["objects"])) if p.get("objects") else None
                image, labels = read_image(self._inside(p["image"])), read_labels(self._inside(p["labels"]))
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"Project {str(self.folder)!r}: pair {p['name']!r} cannot be read ({err}); nothing was changed. "
                    "Restore its files, or remove the pair from project.json."
                ) from None
            out.append(Pair(p["name"], image, labels, objects))
        return out

    def _inside(self, rel: str) -> Path:
        """A path of ``project.json`` inside the project folder (a damaged or foreign file may not point out of it)."""
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise ValueError(f"{rel!r} is outside the project folder")
        return path
