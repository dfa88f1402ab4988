"""Models out of the plugin: one ONNX or TorchScript file, or a bioimage.io model package
(:mod:`.export_bioimageio`), each checked against PyTorch on a sample before it is reported written.

What is exported is the network: raw intensities normalised as the card says go in (a bioimage.io package
does the normalisation itself; an ONNX or TorchScript file takes the normalised image), and the raw
output maps (class logits, ...) come out, as the model computes them before the task's post-processing.
Models that output a list of objects (Mask R-CNN, SOLO, DeepMask) have no such single map and are
refused with a sentence naming the format that carries them (the ``.segsuite.zip`` of
``segsuite models --export``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geometry import whole_input_only
from .model_files import SegModel
from .models import get_spec
from .preprocess import infer_axes, normalize, to_slices

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
#: Largest difference from PyTorch an exported model may show on the sample (absolute, on the raw maps).
TOLERANCE = 1e-4
#: Edge of the generated sample the exports are checked on (2D; volumes are smaller).
SAMPLE_EDGE = 256
#: Spatial size step of a model that does not say its own: 32 (five halvings) suits every 2D architecture.
DEFAULT_STEP = 32
EXTRA_HINT = "pip install 'napari-segsuite[export]'"


@dataclass
class ExportResult:
    """What an export wrote and how close each exported form came to PyTorch.

    Attributes:
        path: The file or package written.
        format: ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
        max_diff: Largest absolute difference from PyTorch on the sample, per weight format.
        notes: Anything the user should know (a weight format left out, and why).
    """

    path: Path
    format: str
    max_diff: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_diff.items())
        text = f"{self.path} ({self.format}; largest difference from PyTorch on the sample: {diffs})"
        return " ".join([text, *self.notes])


def check_exportable(model: SegModel, fmt: str) -> None:
    """Refuse what ``fmt`` cannot hold, in one sentence naming the format that works.

    Raises:
        ValueError: an unknown format, or a model that outputs a list of objects.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if get_spec(model.card.architecture).objects:
        raise ValueError(
            f"'{model.name}' is a {model.card.architecture} model: it outputs a list of objects (boxes, masks, "
            f"scores), which {fmt} cannot hold. Share it as a .segsuite.zip instead (segsuite models --export "
            f"{model.name} FILE), which napari-segsuite reads and fine-tunes; {', '.join(FORMATS)} take models "
            "that output maps (semantic, instance-map and panoptic models)."
        )
    if why := whole_input_only(model.card):  # an exported network is given the image alone, on its own grid
        raise ValueError(
            f"'{model.name}' {why}, which a {fmt} network cannot. Share it as a .segsuite.zip instead "
            f"(segsuite models --export {model.name} FILE), which napari-segsuite reads and fine-tunes."
        )


def size_steps(model: SegModel) -> tuple[int, ...]:
    """Each spatial axis' size step: exported inputs are multiples of it, so a network that pads itself to
    a multiple never pads (a traced network keeps only the path it took while traced)."""
    dims = model.card.spatial_dims
    own = getattr(model.module, "multiple", None)
    if own is None:
        own = getattr(getattr(model.module, "net", None), "multiple", None)
    if own is None:
        steps: tuple[int, ...] = (DEFAULT_STEP,) * dims
    else:
        steps = tuple(own) if isinstance(own, (tuple, list)) else (int(own),) * dims
        steps = tuple(int(s) for s in steps[-dims:])
    d = model.card.divisible_by
    return tuple(s if i < dims - 2 else math.lcm(s, d) for i, s in enumerate(steps))


def sample_image(model: SegModel, image: np.ndarray | None = None) -> np.ndarray:
    """A raw (not normalised) ``(1, C, H, W)`` or ``(1, C, D, H, W)`` float32 sample for the model: ``image``
    cropped to multiples of :func:`size_steps` (at most :data:`SAMPLE_EDGE` a side), or a generated one
    (nuclei for grey models, the RGB scene for colour ones, a nuclei volume for 3D models).

    Raises:
        ValueError: ``image`` is smaller than one step, or 2D for a 3D model.
    """
    from .sample_data import nuclei_2d, nuclei_3d, rgb_scene

    card, steps = model.card, size_steps(model)
    if image is None:
        if card.spatial_dims == 3:
            image = nuclei_3d(seed=0, shape=(max(steps[0], 16), 64, 64))["image"]
        elif card.in_channels == 3:
            image = rgb_scene(seed=0, shape=(SAMPLE_EDGE, SAMPLE_EDGE))["image"]
        else:
            image = nuclei_2d(seed=0, shape=(SAMPLE_EDGE, SAMPLE_EDGE))["image"]
    axes = infer_axes(np.shape(image))
    if card.spatial_dims == 3 and not axes.volume:
        raise ValueError(f"'{model.name}' is a 3D model; give a volume (Z, Y, X) as the sample, not a 2D image.")
    slices = to_slices(np.asarray(image), axes, card.in_channels)  # (S, C, H, W)
    if card.spatial_dims == 3:
        arr = np.moveaxis(slices, 0, 1)[None]  # (1, C, Z, H, W)
    else:
        arr = slices[slices.shape[0] // 2][None]  # a volume's middle slice for a 2D model
    spatial = arr.shape[2:]
    sizes = [min(s, SAMPLE_EDGE) // st * st for s, st in zip(spatial, steps)]
    if min(sizes) == 0:
        raise ValueError(
            f"The sample of shape {tuple(spatial)} is smaller than the {'x'.join(map(str, steps))} pixels "
            f"'{model.name}' takes at least; give a larger sample image."
        )
    return np.ascontiguousarray(arr[(slice(None), slice(None), *(slice(0, n) for n in sizes))], dtype=np.float32)


def normalized(model: SegModel, raw: np.ndarray) -> np.ndarray:
    """``raw`` (a :func:`sample_image`) normalised as the model's card says, per channel over the whole sample."""
    slices = np.moveaxis(raw[0], 0, 1) if raw.ndim == 5 else raw  # (S, C, H, W), as the engine normalises
    out = normalize(np.ascontiguousarray(slices), model.card.normalization)
    return np.ascontiguousarray(np.moveaxis(out, 1, 0)[None] if raw.ndim == 5 else out, dtype=np.float32)


def forward(model: SegModel, x: np.ndarray) -> np.ndarray:
    """The network's raw output for ``x`` on the CPU, in float32.

    Raises:
        ValueError: the output is not one tensor (nothing an exported file could give).
    """
    module = model.module.cpu().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"'{model.name}' ({model.card.architecture}) does not output one map tensor; it cannot be exported "
            "as ONNX, TorchScript or bioimage.io. Share it as a .segsuite.zip (segsuite models --export)."
        )
    return out.float().numpy()


@contextmanager
def _quiet() -> Iterator[None]:
    """Tracing's warnings about Python values made constant: the sizes are multiples of the steps, where
    those branches never change."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _bigger(x: np.ndarray, steps: tuple[int, ...]) -> np.ndarray:
    """A second input one step larger on every spatial axis (reflected), to check an export is not tied to one size."""
    pads = [(0, 0), (0, 0), *((0, s) for s in steps)]
    if all(s < n for s, n in zip(steps, x.shape[2:])):
        return np.ascontiguousarray(np.pad(x, pads, mode="reflect"))
    return np.ascontiguousarray(np.pad(x, pads, mode="edge"))


def _checked(name: str, fmt: str, diff: float) -> float:
    if not diff <= TOLERANCE:  # NaN fails too
        raise ValueError(
            f"The {fmt} export of '{name}' differs from PyTorch by {diff:.2e} on the sample (more than "
            f"{TOLERANCE:g}); it was not kept. Please report this with the model's architecture."
        )
    return diff


def write_torchscript(model: SegModel, path: str | Path, x: np.ndarray) -> float:
    """Trace the network on ``x`` (normalised, sizes multiples of :func:`size_steps`), save it, load it back
    and compare with PyTorch on ``x`` and on an input one step larger. Returns the largest difference.

    Raises:
        ValueError: the trace fails or differs by more than :data:`TOLERANCE`.
    """
    module = model.module.cpu().eval()
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(module, torch.from_numpy(x), check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")
            diff = 0.0
            for inp in (x, _bigger(x, size_steps(model))):
                got = loaded(torch.from_numpy(inp)).float().numpy()
                diff = max(diff, float(np.abs(got - forward(model, inp)).max()))
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            f"'{model.name}' ({model.card.architecture}) cannot be traced to TorchScript: "
            f"{' '.join(str(err).split())[:200]}. Share it as a .segsuite.zip (segsuite models --export)."
        ) from None
    return _checked(model.name, "TorchScript", diff)


def write_onnx(model: SegModel, path: str | Path, x: np.ndarray) -> float:
    """Export the network to ONNX (batch and spatial axes dynamic), then run the file with onnxruntime on
    ``x`` and on an input one step larger and compare with PyTorch. Returns the largest difference.

    Raises:
        ValueError: the export fails or differs by more than :data:`TOLERANCE`.
        ImportError: onnx or onnxruntime is not installed (the ``export`` extra).
    """
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: {EXTRA_HINT}.") from None
    names = ["batch", "channel", *("z", "y", "x")[-model.card.spatial_dims :]]
    dynamic = {i: n for i, n in enumerate(names) if n != "channel"}
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model.module.cpu().eval(),
                (torch.from_numpy(x),),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": dynamic, "output": dynamic},
            )
    except Exception as err:
        Path(path).unlink(missing_ok=True)
        raise ValueError(
            f"'{model.name}' ({model.card.architecture}) cannot be exported to ONNX: "
            f"{' '.join(str(err).split())[:200]}. Try TorchScript (--format torchscript), or share it as a "
            ".segsuite.zip (segsuite models --export), which always works."
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for inp in (x, _bigger(x, size_steps(model))):
        got = session.run(None, {"input": inp})[0]
        diff = max(diff, float(np.abs(got - forward(model, inp)).max()))
    return _checked(model.name, "ONNX", diff)


def export(
    model_spec: str | Path | SegModel,
    fmt: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    sample: np.ndarray | None = None,
    **package: Any,
) -> ExportResult:
    """Export a trained model (a name, a folder, a bioimage.io package or a loaded model) as ``fmt``.

    Args:
        out: The file (``onnx``, ``torchscript``), or for ``bioimageio`` a folder or a ``.zip`` file.
        sample: An image to check the export on (and, for bioimage.io, its test tensors and cover);
            ``None``: a generated sample that fits the model.
        package: For ``bioimageio``: ``authors``, ``license``, ``run_test`` (see
            :func:`~.export_bioimageio.write_package`).

    Raises:
        ValueError: an unknown format, a model that cannot be exported as ``fmt`` (the sentence names a
            format that works), ``out`` exists (without ``overwrite``), or an export that differs from PyTorch.
    """
    from ._fs import atomic_write

    model = model_spec if isinstance(model_spec, SegModel) else load_any(model_spec)
    check_exportable(model, fmt)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(
            f"{str(out)!r} exists already; choose another name, or add --overwrite to replace it (nothing was written)."
        )
    x = normalized(model, sample_image(model, sample))
    forward(model, x)  # refuses a model without one output tensor before anything is written
    if fmt == "bioimageio":
        from .export_bioimageio import write_package

        return write_package(model, out, sample_image(model, sample), overwrite=overwrite, **package)
    writer = write_onnx if fmt == "onnx" else write_torchscript
    with atomic_write(out, suffix=SUFFIX[fmt]) as tmp:
        diff = writer(model, tmp, x)
    return ExportResult(out, fmt, {fmt: diff})


def load_any(spec: str | Path) -> SegModel:
    """A trained model from a stored name, a model folder, or a bioimage.io package of ours (folder or zip)."""
    from .export_bioimageio import is_package, load_package
    from .model_files import load_model
    from .store import resolve_trained

    if is_package(spec):
        return load_package(spec)
    return load_model(resolve_trained(str(spec)))
