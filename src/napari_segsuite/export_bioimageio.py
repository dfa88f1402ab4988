"""bioimage.io model packages (spec 0.5) of our models, and our models back out of them.

A package holds the network three ways: a PyTorch state dict with the architecture named as a callable
of this package (:func:`network`), TorchScript and ONNX; test tensors (raw sample in, raw maps out), the
card's percentile normalisation as ``scale_range`` preprocessing, a cover (the sample beside its
classes), a README, and as attachments our own ``model.json`` and ``model.safetensors``. Reading a
package back (:func:`load_package`) uses only those two attachments, so nothing is ever unpickled.

The bioimage.io libraries are optional (the ``export`` extra) and imported only here.
"""

from __future__ import annotations

import getpass
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import (
    EXTRA_HINT,
    ONNX_OPSET,
    TOLERANCE,
    ExportResult,
    forward,
    normalized,
    size_steps,
    write_onnx,
    write_torchscript,
)
from .model_files import CARD_FILE, MAX_CARD_BYTES, WEIGHTS_FILE, SegModel, load_model, save_model

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
PROJECT_URL = "https://github.com/napari-segsuite/napari-segsuite"
#: Papers of the architectures, by registry name prefix (longest first wins).
PAPERS = {
    "unet3d": ("Çiçek et al. 2016, 3D U-Net", "10.1007/978-3-319-46723-8_49"),
    "unet": ("Ronneberger et al. 2015, U-Net", "10.1007/978-3-319-24574-4_28"),
    "fcn": ("Long et al. 2015, Fully convolutional networks for semantic segmentation", "10.1109/CVPR.2015.7298965"),
    "segnet": ("Badrinarayanan et al. 2017, SegNet", "10.1109/TPAMI.2016.2644615"),
    "pspnet": ("Zhao et al. 2017, Pyramid scene parsing network", "10.1109/CVPR.2017.660"),
    "deeplabv3plus": ("Chen et al. 2018, DeepLabv3+", "10.1007/978-3-030-01234-2_49"),
}


def network(architecture: str, num_classes: int, in_channels: int, build: dict[str, Any] | None = None) -> Any:
    """The untrained network of a package's ``pytorch_state_dict`` entry (the callable its rdf names).

    Raises:
        ValueError: the arguments do not fit the registered architecture.
    """
    from .model_files import _build_checked
    from .models import get_spec

    module = _build_checked(get_spec(architecture), num_classes, in_channels, dict(build or {}), "", ValueError)
    return module.eval()


def _spec() -> Any:
    try:
        import bioimageio.spec
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ImportError(f"bioimage.io export needs bioimageio.spec and bioimageio.core: {EXTRA_HINT}.") from None
    return bioimageio.spec, v0_5


def _cover(model: SegModel, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the normalised sample (a volume's middle slice) beside its most probable class, coloured."""
    import imageio.v3 as iio

    if x.ndim == 5:
        x, y = x[:, :, x.shape[2] // 2], y[:, :, y.shape[2] // 2]
    img = np.moveaxis(x[0], 0, -1)
    img = img.mean(-1) if img.shape[-1] != 3 else img
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / (hi - lo if hi > lo else 1), 0, 1)
    left = (np.stack([grey] * 3, -1) if grey.ndim == 2 else grey) * 255
    k = max(1, model.card.num_classes)
    palette = np.array([[0, 0, 0], [255, 200, 0], [0, 170, 255], [255, 60, 120], [120, 220, 80], [180, 100, 255]])
    classes = y[0, :k].argmax(0) if y.shape[1] >= 1 else np.zeros(left.shape[:2], int)
    right = palette[classes % len(palette)] * 0.6 + left * 0.4
    iio.imwrite(path, np.concatenate([left, right], 1).astype(np.uint8))


def _readme(model: SegModel, formats: list[str]) -> str:
    from .tasks import get_task

    c = model.card
    lines = [
        f"# {c.display_name}",
        "",
        c.description or f"A {c.kind} {c.architecture} model trained with napari-segsuite.",
        "",
        f"- Architecture: `{c.architecture}` ({c.spatial_dims}D), builder arguments `{json.dumps(c.build)}`",
        f"- Input: {c.in_channels} channel(s), raw intensities; the package normalises them "
        f"({json.dumps(c.normalization)}).",
        f"- Output: {get_task(c.kind).output_channels(c)} raw map(s) per pixel ({c.kind} task). "
        + ("Classes: " + ", ".join(f"{n} (label value {v})" for n, v in zip(c.class_names, c.label_values)) + ".")
        + " For semantic models the most probable class (argmax over the channel axis) is each pixel's class.",
        f"- Weight formats: {', '.join(formats)}.",
        "",
        "## Use in napari-segsuite",
        "",
        "Give the package (folder or zip) as `--model` to `segsuite segment` or `segsuite train` (to fine-tune), or",
        "add it to the model store with `segsuite import PACKAGE`. The attachments `model.json` and",
        "`model.safetensors` are the napari-segsuite model itself; nothing in the package is unpickled.",
    ]
    if c.metrics:
        lines += ["", "## Validation", "", *(f"- {k}: {v}" for k, v in c.metrics.items() if not isinstance(v, dict))]
    return "\n".join(lines) + "\n"


def _axes(v: Any, model: SegModel, steps: tuple[int, ...], n_out: int | None = None) -> list[Any]:
    """A tensor's axes: batch, channel, then space (input sizes in steps; output sizes those of the input)."""
    names = ("z", "y", "x")[-model.card.spatial_dims :]
    c = model.card
    if n_out is not None:
        from .tasks import get_task

        task = get_task(c.kind)  # class maps alone (semantic): channels named as classes
        kind = "class" if task.gives_classes and not task.gives_ids and n_out == c.num_classes else "map"
        chans = [v.Identifier(f"{kind}{i}") for i in range(n_out)]
        axes: list[Any] = [v.BatchAxis(), v.ChannelAxis(channel_names=chans)]
        for n in names:
            size = v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId(n))
            axes.append(v.SpaceOutputAxis(id=v.AxisId(n), size=size))
        return axes
    chans = (
        ["grey"]
        if c.in_channels == 1
        else ["red", "green", "blue"][: c.in_channels] + [f"c{i}" for i in range(3, c.in_channels)]
    )
    axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(n) for n in chans])]
    for n, st in zip(names, steps):
        axes.append(v.SpaceInputAxis(id=v.AxisId(n), size=v.ParameterizedSize(min=st, step=st)))
    return axes


def write_package(
    model: SegModel,
    out: str | Path,
    raw: np.ndarray,
    *,
    overwrite: bool = False,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
    run_test: bool = True,
) -> ExportResult:
    """Write ``model`` as a bioimage.io package: a folder, or one zip file when ``out`` ends in ``.zip``.

    Args:
        raw: The raw sample (:func:`~.export.sample_image`) the test tensors and the cover are made from.
        authors: Names for the package's ``authors`` (default: the user's login name).
        license: SPDX identifier of the weights' licence.
        run_test: Also run bioimage.io's own model test (every weight format, offline) and refuse a failure.

    Raises:
        ValueError: the spec refuses the description, or its test fails (the message quotes why).
    """
    spec, v = _spec()
    out = Path(out)
    x = normalized(model, raw)
    y = forward(model, x)
    work = Path(tempfile.mkdtemp(prefix=".segsuite-bioimageio-"))
    result = ExportResult(out, "bioimageio")
    try:
        np.save(work / "test_input.npy", raw)
        np.save(work / "test_output.npy", y)
        import tifffile

        tifffile.imwrite(work / "sample_input.tif", raw)
        tifffile.imwrite(work / "sample_output.tif", y)
        state = {k: t.detach().cpu().contiguous() for k, t in model.module.state_dict().items()}
        torch.save(state, work / "weights.pt")
        weights: dict[str, Any] = {}
        torch_version = v.Version(torch.__version__.split("+")[0])
        try:
            result.max_diff["torchscript"] = write_torchscript(model, work / "weights_torchscript.pt", x)
            weights["torchscript"] = v.TorchscriptWeightsDescr(
                source=work / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
            )
        except ValueError as err:
            result.notes.append(f"No TorchScript weights: {err}")
        try:
            result.max_diff["onnx"] = write_onnx(model, work / "weights.onnx", x)
            weights["onnx"] = v.OnnxWeightsDescr(
                source=work / "weights.onnx", opset_version=ONNX_OPSET, parent="pytorch_state_dict"
            )
        except ValueError as err:
            result.notes.append(f"No ONNX weights: {err}")
        saved = save_model(model, work / "segsuite")  # the card and safetensors, as attachments
        _cover(model, x, y, work / "cover.png")
        formats = ["pytorch_state_dict", *weights]
        (work / "README.md").write_text(_readme(model, formats), encoding="utf-8")
        c = model.card
        arch = v.ArchitectureFromLibraryDescr(
            callable=v.Identifier("network"),
            import_from="napari_segsuite.export_bioimageio",
            kwargs={
                "architecture": c.architecture,
                "num_classes": c.num_classes,
                "in_channels": c.in_channels,
                "build": dict(c.build),
            },
        )
        pre: list[Any] = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))]
        if c.normalization.get("kind") == "percentile":
            names = [v.AxisId(n) for n in ("z", "y", "x")[-c.spatial_dims :]]
            kwargs = v.ScaleRangeKwargs(
                axes=names, min_percentile=c.normalization["low"], max_percentile=c.normalization["high"]
            )
            pre.append(v.ScaleRangeDescr(kwargs=kwargs))
        steps = size_steps(model)
        paper = next(
            (p for k, p in sorted(PAPERS.items(), key=lambda kv: -len(kv[0])) if c.architecture.startswith(k)), None
        )
        cite = [
            v.CiteEntry(
                text="napari-segsuite: deep-learning segmentation trained from napari's Labels layers",
                url=v.HttpUrl(PROJECT_URL),
            )
        ]
        if paper:
            cite.append(v.CiteEntry(text=paper[0], doi=v.Doi(paper[1])))
        descr = v.ModelDescr(
            name=_name(c.display_name),
            description=(
                c.description
                or f"{c.kind.capitalize()} segmentation ({c.architecture}, {c.spatial_dims}D) trained with napari-segsuite; classes: {', '.join(c.class_names)}."
            )[:1024],
            authors=[v.Author(name=a) for a in (authors or [getpass.getuser()])],
            cite=cite,
            license=v.LicenseId(license),
            tags=["napari-segsuite", c.kind, c.architecture, f"{c.spatial_dims}d", "segmentation"],
            documentation=v.FileDescr(source=work / "README.md"),
            covers=[v.FileDescr(source=work / "cover.png")],
            attachments=[v.FileDescr(source=saved / CARD_FILE), v.FileDescr(source=saved / WEIGHTS_FILE)],
            inputs=[
                v.InputTensorDescr(
                    id=v.TensorId("raw"),
                    axes=_axes(v, model, steps),
                    test_tensor=v.FileDescr(source=work / "test_input.npy"),
                    sample_tensor=v.FileDescr(source=work / "sample_input.tif"),
                    preprocessing=pre,
                )
            ],
            outputs=[
                v.OutputTensorDescr(
                    id=v.TensorId("maps"),
                    description="raw output maps (class logits for semantic models)",
                    axes=_axes(v, model, steps, y.shape[1]),
                    test_tensor=v.FileDescr(source=work / "test_output.npy"),
                    sample_tensor=v.FileDescr(source=work / "sample_output.tif"),
                )
            ],
            weights=v.WeightsDescr(
                pytorch_state_dict=v.PytorchStateDictWeightsDescr(
                    source=work / "weights.pt", architecture=arch, pytorch_version=torch_version
                ),
                **weights,
            ),
            config=v.Config(
                bioimageio=v.BioimageioConfig(
                    reproducibility_tolerance=[
                        v.ReproducibilityTolerance(
                            absolute_tolerance=TOLERANCE,
                            relative_tolerance=TOLERANCE,
                            mismatched_elements_per_million=0,
                        )
                    ]
                )
            ),
        )
        if out.exists() and not overwrite:
            raise ValueError(f"{str(out)!r} exists already; add --overwrite to replace it (nothing was written).")
        tmp_out = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp_out, ignore_errors=True)
        tmp_out.unlink(missing_ok=True)
        if out.suffix == ".zip":
            spec.save_bioimageio_package(descr, output_path=tmp_out)
        else:
            spec.save_bioimageio_package_as_folder(descr, output_path=tmp_out)
        try:
            check_package(tmp_out, run_test=run_test)
            _replace(out)
            tmp_out.rename(out)
        finally:
            shutil.rmtree(tmp_out, ignore_errors=True) if tmp_out.is_dir() else tmp_out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _name(text: str) -> str:
    """A package name the spec takes (letters, digits, spaces, ``_-()+``; at most 128 characters)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9 _+()-]+", " ", text).strip() or "napari-segsuite model"
    return (cleaned if len(cleaned) >= 5 else f"{cleaned} model")[:128]


def _replace(out: Path) -> None:
    """Remove the package ``out`` that a new, checked one replaces."""
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()


def check_package(path: str | Path, run_test: bool = True) -> None:
    """Validate a package with bioimage.io's own validator and (``run_test``) its model test on the CPU.

    Raises:
        ValueError: the first error either reports.
    """
    spec, _ = _spec()
    descr = spec.load_description(str(path), perform_io_checks=True)
    if isinstance(descr, spec.InvalidDescr):
        raise ValueError(f"bioimage.io's validator refused the package: {_errors(descr.validation_summary)}")
    if run_test:
        from bioimageio.core import test_model

        summary = test_model(descr, devices=["cpu"])
        if summary.status != "passed":
            raise ValueError(f"bioimage.io's model test failed: {_errors(summary)}")


def _errors(summary: Any) -> str:
    errs = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errs[:3])[:600] or str(summary.status)


def is_package(spec: str | Path) -> bool:
    """Whether ``spec`` is a bioimage.io package: a folder with ``rdf.yaml``, a ``.zip`` holding one, or the yaml."""
    p = Path(spec)
    if p.is_dir():
        return any((p / n).is_file() for n in RDF_NAMES)
    if p.is_file() and p.name in RDF_NAMES:
        return True
    if p.is_file() and p.suffix == ".zip":
        try:
            with zipfile.ZipFile(p) as z:
                return any(n in z.namelist() for n in RDF_NAMES)
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def package_to_folder(spec: str | Path, dest: str | Path) -> Path:
    """Copy the napari-segsuite model out of a package (its ``model.json`` and ``model.safetensors``
    attachments) into the model folder ``dest``; nothing else is read.

    Raises:
        ValueError: the package holds no napari-segsuite model (a package from elsewhere).
    """
    p = Path(spec)
    p = p.parent if p.is_file() and p.name in RDF_NAMES else p
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    why = (
        f"{p.name!r} is a bioimage.io package without a napari-segsuite model ({CARD_FILE} and {WEIGHTS_FILE} "
        "attachments); only packages exported by napari-segsuite can be fine-tuned here."
    )
    if p.is_dir():
        for f in (CARD_FILE, WEIGHTS_FILE):
            if not (p / f).is_file():
                raise ValueError(why)
        if (p / CARD_FILE).stat().st_size > MAX_CARD_BYTES:
            raise ValueError(f"{p.name!r}: {CARD_FILE} is too large for a model card.")
        for f in (CARD_FILE, WEIGHTS_FILE):
            shutil.copyfile(p / f, dest / f)
        return dest
    with zipfile.ZipFile(p) as z:
        names = set(z.namelist())
        if not {CARD_FILE, WEIGHTS_FILE} <= names:
            raise ValueError(why)
        if z.getinfo(CARD_FILE).file_size > MAX_CARD_BYTES:
            raise ValueError(f"{p.name!r}: {CARD_FILE} is too large for a model card.")
        for f in (CARD_FILE, WEIGHTS_FILE):
            with z.open(f) as src, open(dest / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


def load_package(spec: str | Path, device: str = "cpu") -> SegModel:
    """The napari-segsuite model inside a package of ours (folder or zip), ready to run or fine-tune.

    Raises:
        ValueError: not a package of ours, or its model does not load.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".segsuite-package-"))
    try:
        model = load_model(package_to_folder(spec, tmp / "model"), device=device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.card.path = None
    return model
