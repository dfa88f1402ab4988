"""The model store: built-in models shipped with the package and the user's trained models.

User models live in ``$SEGSUITE_MODEL_DIR`` if set, else in the platform's user data folder
(``platformdirs.user_data_dir("napari-segsuite")/models``). Listing reads only the JSON cards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._fs import atomic_write
from .card import CardError, ModelCard
from .model_files import CARD_FILE, MAX_CARD_BYTES, WEIGHTS_FILE, is_model_path, read_card, write_card
from .tasks import score_of

BUILTIN_DIR = Path(__file__).parent / "builtin"
#: More folders of trained models to list (the Fine-tune widget adds an open project's ``models/``).
EXTRA_DIRS: list[Path] = []


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
    card: ModelCard
    builtin: bool

    @property
    def label(self) -> str:
        """One line for a picker: name, architecture, task, and the validation score (mean IoU, AP50 or PQ) when known."""
        sc = score_of(self.card)
        score = f", val {sc[0]} {sc[1]:.2f}" if sc else ""
        origin = "built-in" if self.builtin else self.card.architecture
        return f"{self.name} ({origin}, {self.card.kind}{score})"


def _read(folder: Path, builtin: bool) -> StoredModel | None:
    try:
        card = read_card(folder)
    except CardError:
        return None  # not a model of ours, or a broken one: not listed
    if not (folder / WEIGHTS_FILE).is_file():
        return None
    return StoredModel(folder.name, folder, card, builtin)


def list_models(kind: str | None = None) -> list[StoredModel]:
    """Built-in models first, then the user's, newest last; optionally only one task ``kind``."""
    found: list[StoredModel] = []
    for root, builtin in ((BUILTIN_DIR, True), (model_dir(), False), *((d, False) for d in EXTRA_DIRS)):
        if not root.is_dir():
            continue
        folders = sorted(
            (f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")),
            key=lambda f: (f.stat().st_mtime, f.name),
        )
        for f in folders:
            m = _read(f, builtin)
            if m is not None and (kind is None or m.card.kind == kind):
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
    if is_model_path(spec):  # a model folder, or an unzipped bioimage.io package of ours (the same two files)
        p = Path(spec)
        return p.parent if p.is_file() else p
    if str(spec).endswith(".zip") and Path(spec).is_file():
        return _unpacked(Path(spec))
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


def _unpacked(file: Path) -> Path:
    """The model inside a ``.segsuite.zip`` or a zipped bioimage.io package of ours, copied out (only its
    ``model.json`` and ``model.safetensors``) to a temporary folder removed when the program ends."""
    import atexit
    import shutil
    import tempfile
    import zipfile

    from .export_bioimageio import package_to_folder

    tmp = Path(tempfile.mkdtemp(prefix=".segsuite-zip-"))
    atexit.register(shutil.rmtree, tmp, True)
    try:
        return package_to_folder(file, tmp / safe_name(file.name.split(".")[0]))
    except zipfile.BadZipFile:
        raise ValueError(f"{file.name!r} is not a model (not a zip file).") from None


def safe_name(name: str) -> str:
    """A file-system-safe model name."""
    cleaned = re.sub(r"[^A-Za-z0-9 ._-]+", "-", name.strip()).strip("-. ")
    return cleaned or "model"


def new_model_path(name: str, root: str | Path | None = None) -> Path:
    """A fresh folder path in ``root`` (default :func:`model_dir`) for ``name``; never an existing
    model's (adds -2, -3, ...)."""
    base = safe_name(name)
    root = Path(root) if root is not None else model_dir()
    path, i = root / base, 2
    while path.exists() or (BUILTIN_DIR / path.name).exists():
        path, i = root / f"{base}-{i}", i + 1
    return path


def reserve_model_path(name: str, root: str | Path | None = None) -> Path:
    """:func:`new_model_path`, created empty at once, so two runs started together never share a folder
    (the second gets ``-2``); :func:`release_model_path` removes it again if nothing was saved there."""
    while True:
        path = new_model_path(name, root)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path


def release_model_path(path: str | Path) -> None:
    """Remove a folder from :func:`reserve_model_path` if it is still empty (no model was saved)."""
    with contextlib.suppress(OSError):  # not empty (a model was saved), or gone
        Path(path).rmdir()


def _user_model(name: str) -> StoredModel:
    hit = next((m for m in reversed(list_models()) if m.name == name and not m.builtin), None)
    if hit is None:
        if any(m.name == name for m in list_models()):
            raise ValueError(f"{name!r} is a built-in model; it cannot be renamed or deleted.")
        raise FileNotFoundError(
            f"No stored model named {name!r}. Stored: {', '.join(m.name for m in list_models()) or 'none'}."
        )
    return hit


def rename_model(name: str, new_name: str) -> Path:
    """Rename a user model (its folder and the name in its card); returns the new folder.

    Raises:
        ValueError: a model called ``new_name`` exists already, or ``name`` is built in.
    """
    m = _user_model(name)
    target = m.path.parent / safe_name(new_name)
    if target.exists() or (BUILTIN_DIR / target.name).exists():
        raise ValueError(f"A model named {target.name!r} exists already; choose another name.")
    os.replace(m.path, target)
    card = read_card(target)
    card.name = target.name
    write_card(target, card)
    return target


def delete_model(name: str) -> Path:
    """Delete a user model's folder (front ends ask the user to confirm first); returns the removed path."""
    import shutil

    m = _user_model(name)
    trash = m.path.with_name(f".{m.path.name}.deleting")
    os.replace(m.path, trash)  # gone from listings at once, even if removal is slow
    shutil.rmtree(trash, ignore_errors=True)
    return m.path


def export_model(spec: str, dest: str | Path, *, overwrite: bool = False) -> Path:
    """Write a stored model (a name or a folder) as one ``.segsuite.zip`` file: its card and safetensors
    weights, nothing executable. Returns the file written.

    Raises:
        ValueError: ``dest`` exists and ``overwrite`` is not set, or it is inside the model's own folder.
    """
    import zipfile

    from .checks import _same

    folder = resolve_trained(spec)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / f"{folder.name}.segsuite.zip"
    if _same(dest.parent, folder) or any(_same(dest, folder / f) for f in (CARD_FILE, WEIGHTS_FILE)):
        raise ValueError(
            f"Exporting to {str(dest)!r} would write into the model's own folder; choose a file outside "
            f"{str(folder)!r} (nothing was written)."
        )
    if dest.exists() and not overwrite:
        raise ValueError(
            f"{str(dest)!r} exists already; choose another file name, or add --overwrite to replace it "
            "(nothing was written)."
        )
    with atomic_write(dest) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(folder / CARD_FILE, CARD_FILE)
        z.write(folder / WEIGHTS_FILE, WEIGHTS_FILE)
    return dest


def import_model(file: str | Path, name: str | None = None) -> Path:
    """Add a model exported by :func:`export_model` to the store (under a fresh name) and check it loads.

    Also takes a bioimage.io package exported by napari-segsuite (folder or zip). Only the two expected
    members are read (JSON and safetensors, never unpickled); anything else in the archive is ignored.

    Raises:
        ValueError: the file is not an exported model, or its weights do not fit its card.
    """
    import shutil
    import tempfile
    import zipfile

    file = Path(file)
    if file.is_dir():  # an unzipped bioimage.io package of ours
        if not is_model_path(file) or not (file / WEIGHTS_FILE).is_file():
            raise ValueError(f"{file.name!r} holds no napari-segsuite model ({CARD_FILE} and {WEIGHTS_FILE}).")
        card = read_card(file)
        target = new_model_path(name or card.name or file.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        for member in (CARD_FILE, WEIGHTS_FILE):
            shutil.copyfile(file / member, tmp / member)
        return _finish_import(file, tmp, target, card)
    try:
        with zipfile.ZipFile(file) as z:
            members = set(z.namelist())
            if not {CARD_FILE, WEIGHTS_FILE} <= members:
                raise ValueError(f"{file.name!r} is not an exported model: it lacks {CARD_FILE} or {WEIGHTS_FILE}.")
            try:
                if z.getinfo(CARD_FILE).file_size > MAX_CARD_BYTES:
                    raise ValueError(f"{CARD_FILE} is too large for a model card")
                card = ModelCard.from_json(json.loads(z.read(CARD_FILE)), source=f"{file.name}: {CARD_FILE}")
            except (ValueError, RecursionError) as err:  # not JSON, or not a valid card
                raise ValueError(f"{file.name!r} does not hold a usable model card: {err}") from None
            stem = name or card.name or file.name.split(".")[0]
            target = new_model_path(stem)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            for member in (CARD_FILE, WEIGHTS_FILE):
                with z.open(member) as src, open(tmp / member, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile:
        raise ValueError(f"{file.name!r} is not an exported model (not a zip file).") from None
    return _finish_import(file, tmp, target, card)


def _finish_import(file: Path, tmp: Path, target: Path, card: ModelCard) -> Path:
    """Check the copied model loads, then give it its store name and move it into place."""
    import shutil

    from .model_files import load_model

    try:
        load_model(tmp)
    except (ValueError, KeyError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{file.name!r} does not hold a usable model: {err}") from None
    card.name = target.name
    write_card(tmp, card)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target
