"""Checks made before any work starts, shared by the CLI and the widgets.

Each check raises ``ValueError`` with one sentence naming the file or value, what is wrong and the
fix; none of them writes anything. The rule they enforce: an output never lands on an input, and
nothing that exists is replaced unless the user said ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .model_files import CARD_FILE


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output_folder(output: str | Path) -> Path:
    """``output`` as a folder path that may receive result files.

    Raises:
        ValueError: ``output`` names an existing file (results go into a folder).
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--output {str(output)!r} is an existing file; give a folder for the label images "
            "(it is created if needed)."
        )
    return out


def check_outputs(inputs: Iterable[str | Path], outputs: Iterable[str | Path], *, overwrite: bool = False) -> None:
    """Refuse outputs that would replace an input, or (without ``overwrite``) any existing file.

    Raises:
        ValueError: the first clash found, naming the file and the way out.
    """
    ins = [Path(p) for p in inputs]
    for out in map(Path, outputs):
        clash = next((i for i in ins if _same(i, out)), None)
        if clash is not None:
            raise ValueError(
                f"Writing {str(out)!r} would replace the input image {str(clash)!r}; choose another --output "
                "folder (nothing was written)."
            )
        if out.exists() and not overwrite:
            raise ValueError(
                f"{str(out)!r} exists already; choose another --output folder, or add --overwrite to replace it "
                "(nothing was written)."
            )


def check_model_out(path: str | Path, *, overwrite: bool = False) -> Path:
    """A path a newly trained model may be saved to.

    Raises:
        ValueError: something that is not a model is there (never replaced), or a model is there and
            ``overwrite`` is not set.
    """
    p = Path(path)
    if p.exists() and not (p / CARD_FILE).is_file():
        raise ValueError(
            f"{str(p)!r} exists and is not a saved model; choose a new folder name for the model "
            "(anything else there is left alone)."
        )
    if p.exists() and not overwrite:
        raise ValueError(
            f"{str(p)!r} holds a trained model already; choose another --out, or add --overwrite to replace it."
        )
    return p
