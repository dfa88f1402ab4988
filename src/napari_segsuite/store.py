"""The model store: built-in models shipped with the package and the user's trained models.

User models live in ``$SEGSUITE_MODEL_DIR`` if set, else in the platform's user data folder
(``platformdirs.user_data_dir("napari-segsuite")/models``). Listing reads only the JSON cards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import CARD_FILE, WEIGHTS_FILE, is_model_path

BUILTIN_DIR = Path(__file__).parent / "builtin"


def model_dir() -> Path:
    """The folder user models are saved in (created on first use)."""
    env = os.environ.get("SEGSUITE_MODEL_DIR")
    if env:
        d = Path(env)
    else:
        import platformdirs

        d = Path(platformdirs.user_data_dir("napari-segsuite")) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass(frozen=True)
class StoredModel:
    """A trained model on disk: its name, folder, card and whether it ships with the package."""

    name: str
    path: Path
    card: dict[str, Any]
    builtin: bool

    @property
    def label(self) -> str:
        """One line for a picker: name, architecture, task, and the validation mean IoU when known."""
        m = self.card.get("metrics") or {}
        score = f", val IoU {m['mean_iou']:.2f}" if isinstance(m.get("mean_iou"), (int, float)) else ""
        origin = "built-in" if self.builtin else self.card.get("architecture", "?")
        return f"{self.name} ({origin}, {self.card.get('kind', '?')}{score})"


def _read(folder: Path, builtin: bool) -> StoredModel | None:
    try:
        card = json.loads((folder / CARD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / WEIGHTS_FILE).is_file():
        return None
    return StoredModel(folder.name, folder, card, builtin)


def list_models(kind: str | None = None) -> list[StoredModel]:
    """Built-in models first, then the user's, newest last; optionally only one task ``kind``."""
    found: list[StoredModel] = []
    for root, builtin in ((BUILTIN_DIR, True), (model_dir(), False)):
        if not root.is_dir():
            continue
        folders = sorted((f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")),
                         key=lambda f: (f.stat().st_mtime, f.name))
        for f in folders:
            m = _read(f, builtin)
            if m is not None and (kind is None or m.card.get("kind") == kind):
                found.append(m)
    return found


def find(name: str) -> StoredModel | None:
    """The stored model called ``name`` (user models shadow built-ins of the same name)."""
    hits = [m for m in list_models() if m.name == name]
    return hits[-1] if hits else None


def resolve_trained(spec: str) -> Path:
    """A trained model's folder from a path or a stored model's name.

    Raises:
        FileNotFoundError: ``spec`` is neither; the message lists the stored models.
    """
    if is_model_path(spec):
        p = Path(spec)
        return p.parent if p.is_file() else p
    hit = find(spec)
    if hit is not None:
        return hit.path
    from .models import available

    names = ", ".join(m.name for m in list_models()) or "none yet"
    if spec in {s.name for s in available()}:
        raise FileNotFoundError(
            f"{spec!r} is an untrained architecture. Train it first (segsuite train --model {spec} ...), "
            f"or pick a trained model: {names}."
        )
    raise FileNotFoundError(f"No trained model at or named {spec!r}. Stored models: {names}.")


def safe_name(name: str) -> str:
    """A file-system-safe model name."""
    cleaned = re.sub(r"[^A-Za-z0-9 ._-]+", "-", name.strip()).strip("-. ")
    return cleaned or "model"


def new_model_path(name: str) -> Path:
    """A fresh folder path in :func:`model_dir` for ``name``; never an existing model's (adds -2, -3, ...)."""
    base = safe_name(name)
    root = model_dir()
    path, i = root / base, 2
    while path.exists() or (BUILTIN_DIR / path.name).exists():
        path, i = root / f"{base}-{i}", i + 1
    return path
