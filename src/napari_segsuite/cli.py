"""``segsuite``: the engine on the command line (batch jobs, clusters), the same functions the widgets call.

argparse (standard library) parses the commands and tqdm (already a napari dependency) draws the
progress bars on stderr, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_big import add_flags as add_big_flags
from .cli_share import add_share_commands
from .cli_support import build_args, in_processes, run_with_bar, set_geometry, things
from .cli_support import load_instances as _load_instances
from .cli_support import load_pairs as _load_pairs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("napari_segsuite")
_run = run_with_bar


def cmd_models(args: argparse.Namespace) -> int:
    from .models import available
    from .store import delete_model, export_model, import_model, list_models, rename_model

    if args.rename:
        print(rename_model(*args.rename))
        return 0
    if args.delete:
        if not args.yes:
            raise ValueError(f"Deleting {args.delete!r} cannot be undone; add --yes to confirm.")
        print(f"deleted {delete_model(args.delete)}")
        return 0
    if args.export:
        print(export_model(*args.export, overwrite=args.overwrite))
        return 0
    if args.import_file:
        print(import_model(args.import_file))
        return 0

    archs = [{"name": s.name, "task": s.kind, "description": s.description, "trained": False} for s in available()]
    trained = [
        {"name": m.name, "task": m.card.kind, "description": m.label, "trained": True, "path": str(m.path)}
        for m in list_models()
    ]
    if args.json:
        print(json.dumps(archs + trained, indent=2))
        return 0
    print("Architectures (train with: segsuite train --model NAME ...):")
    for a in archs:
        print(f"  {a['name']:<16} {a['task']:<9} {a['description']}")
    print("Trained models (segment with: segsuite segment --model NAME_OR_PATH ...):")
    for t in trained:
        print(f"  {t['name']:<16} {t['task']:<9} {t['path']}")
    if not trained:
        print("  none yet")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample_data import write_samples

    made = write_samples(args.out, n_images=args.n, seed=args.seed, overwrite=args.overwrite)
    for kind, folder in made.items():
        print(f"{kind}: {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .checks import check_model_out, check_train_config
    from .inference import pick_device
    from .tasks import score_of
    from .training import TrainConfig
    from .workflows import train_model

    out = check_model_out(args.out, overwrite=args.overwrite)  # before an hour of training, not after
    cfg = TrainConfig(
        epochs=args.epochs,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        lr=args.lr,
        patience=args.patience,
        device=args.device,
        seed=args.seed,
        freeze_encoder=args.freeze_encoder,
        ignore_value=args.ignore_value,
        pretrain=args.pretrain,
    )
    check_train_config(cfg)  # the numbers first: before reading any image
    pick_device(args.device)
    build = build_args(args)
    images, labels, names, sizes = _load_pairs(args.images, args.labels)
    instances = _load_instances(args.images, args.instances)
    set_geometry(cfg, args.voxel_size, images, sizes, names)
    result = _run(
        train_model(
            args.model,
            images,
            labels,
            cfg,
            out,
            names=names,
            sparse=args.sparse,
            instances=instances,
            things=things(args.things),
            build=build,
            unlabelled=_load_unlabelled(args.unlabelled),
        ),
        "train",
    )
    t = result.model.card.training or {}
    sc = score_of(result.model.card)
    print(
        f"Saved {out} ({t.get('epochs')} epochs, {t['steps']} steps, {t['seconds']:.0f} s, stopped: {result.stopped}; "
        f"validation on {t['validation']}: {sc[0] if sc else 'score'} {sc[1] if sc else 0:.3f})"
    )
    return 0


def _load_unlabelled(spec: str | None) -> list[np.ndarray]:
    """The images of ``--unlabelled`` (none without it)."""
    from .io import list_images, read_image

    return [read_image(f) for f in list_images(spec)] if spec else []


def cmd_segment(args: argparse.Namespace) -> int:
    from .checks import check_tile, segment_outputs
    from .cli_big import segment_big, segment_files, wants_blocks
    from .cli_support import read_for_segment
    from .inference import pick_device, segment
    from .io import list_images, read_image_info, write_labels, write_objects_table
    from .model_files import load_model
    from .rois import check_rois, object_names, write_rois
    from .store import resolve_trained

    check_tile(args.tile)
    pick_device(args.device)
    model_path = resolve_trained(args.model)
    model = load_model(model_path)
    if wants_blocks(args):  # zarr in or out, or a TIFF too big to read whole: block by block
        return segment_big(args, model, model_path)
    files = list_images(args.input)
    planned = segment_outputs(model, files, args.output, overwrite=args.overwrite or args.resume)
    rois = check_rois(model, files, [p[0] for p in planned.values()], overwrite=args.overwrite) if args.rois else None
    if args.resume:  # outputs are written whole (atomically): one that exists is finished
        files = [f for f in files if not all(p.exists() for p in planned[f] if p is not None)]
        print(f"{len(planned) - len(files)} of {len(planned)} images done already", file=sys.stderr)
    if args.workers or args.scheduler:
        return segment_files(args, model, model_path, files, planned)
    infos = read_for_segment(files, model)  # every input read and checked before the first output
    for f in files:
        info = infos.pop(f) or read_image_info(f)
        seg = _run(segment(model, info.data, tile=args.tile, device=args.device, tta=args.tta), f.name)
        labels_path, ids_path, table_path = planned[f]
        print(write_labels(labels_path, seg.labels, like=info))
        if rois is not None and seg.instances is not None:
            print(
                write_rois(rois[labels_path], seg.instances, object_names(seg.features))
                or f"{f.name}: no objects, no ROIs"
            )
        if ids_path is not None and seg.semantic is not None and seg.instances is not None:
            print(write_labels(ids_path, seg.instances, like=info))  # panoptic: the objects beside the classes
        if table_path is not None and seg.features is not None:
            print(write_objects_table(table_path, seg.features))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checks import check_tile
    from .evaluation import evaluate
    from .inference import pick_device
    from .model_files import load_model
    from .store import resolve_trained
    from .workflows import set_ignore_value

    check_tile(args.tile)
    pick_device(args.device)
    model = load_model(resolve_trained(args.model))
    set_ignore_value(model, args.ignore_value)
    images, labels, names, _ = _load_pairs(args.images, args.labels)
    instances = _load_instances(args.images, args.instances)
    work = evaluate(
        model, images, labels, instances=instances, device=args.device, tile=args.tile, names=names, tta=args.tta
    )
    metrics = _run(work, "evaluate")
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:<16} {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=Path(args.out), headless=args.headless, overwrite=args.overwrite)


def _tta_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the maps over mirrored copies (4x the work); default: as chosen at training (the card's tta)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segsuite", description="Deep-learning segmentation: train, segment, evaluate.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list architectures and trained models")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.add_argument("--rename", nargs=2, metavar=("NAME", "NEW_NAME"), help="rename a trained model")
    s.add_argument("--delete", metavar="NAME", help="delete a trained model (with --yes)")
    s.add_argument("--yes", action="store_true", help="confirm --delete")
    s.add_argument("--export", nargs=2, metavar=("NAME", "FILE"), help="write a model to one .segsuite.zip file")
    s.add_argument("--import", dest="import_file", metavar="FILE", help="add an exported model to the store")
    s.add_argument("--overwrite", action="store_true", help="let --export replace an existing file")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("sample", help="write the generated sample images and labels")
    s.add_argument("--out", required=True, help="folder to write into")
    s.add_argument("--n", type=int, default=8, help="2D images per kind (default 8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace sample files already in --out")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("train", help="train an architecture from scratch or fine-tune a trained model")
    s.add_argument(
        "--model", required=True, help="architecture name (from scratch) or trained model path/name (fine-tune)"
    )
    s.add_argument("--images", required=True, help="folder, file or glob of images (TIFF, PNG, ...; 2D or 3D)")
    s.add_argument(
        "--labels",
        required=True,
        help="folder of label images matched to images by file name (labelme .json or one COCO .json of "
        "polygons: instance labels)",
    )
    s.add_argument("--out", required=True, help="folder the model is saved to (model.safetensors + model.json)")
    s.add_argument(
        "--instances",
        default=None,
        help="folder of object-id images (0 background, 1..N objects) matched by name, labelme .json files, "
        "or one COCO .json (polygons): with --labels holding class values, for instance models with a class "
        "per object and panoptic models",
    )
    s.add_argument(
        "--things",
        default=None,
        help="panoptic models: label values of the countable classes, e.g. 2,3 (default: the classes "
        "found under objects in --instances)",
    )
    s.add_argument(
        "--sparse",
        action="store_true",
        help="sparse labels: 0 = not annotated (ignored); paint every class, background included, as 1..K",
    )
    s.add_argument(
        "--voxel-size",
        default=None,
        metavar="Z,Y,X",
        help="physical voxel size Z,Y,X (or pixel size Y,X) of the images, kept in the model card "
        "(default: the files' own, NIfTI and OME/ImageJ TIFF)",
    )
    s.add_argument(
        "--ignore-value",
        type=int,
        default=None,
        metavar="V",
        help="a label value that is no class, left out of loss and metrics (e.g. 255 in Pascal VOC and labelme exports)",
    )
    s.add_argument("--epochs", type=int, default=100, help="epoch limit (default 100)")
    s.add_argument("--time-budget", type=float, default=None, help="wall-clock limit in seconds; keeps the best model")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument(
        "--patch-size", type=int, default=None, help="crop edge in pixels (default: the model's, 256 for most)"
    )
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's, 2e-3 for most)")
    s.add_argument(
        "--patience",
        type=int,
        default=None,
        help="epochs without improvement before stopping (0: never; default 20, none under --time-budget)",
    )
    s.add_argument(
        "--pretrain",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the budget spent first on self-supervised pre-training on the images (e.g. 0.2; default 0)",
    )
    s.add_argument("--unlabelled", default=None, help="folder or glob of images without labels for --pretrain")
    s.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="fine-tune only the decoder and heads (for very few images); the encoder's weights stay",
    )
    s.add_argument("--encoder", default=None, help="encoder name for models that take one (e.g. resnet34)")
    s.add_argument(
        "--weights",
        default=None,
        help="initial weights of a new model: a local .safetensors file, or 'imagenet' for smp encoders "
        "(needs internet; offline it falls back to random weights with a warning)",
    )
    s.add_argument(
        "--arg",
        action="append",
        metavar="KEY=VALUE",
        help="a builder argument of a new model, repeatable (e.g. --arg upsample=interp --arg base_filters=32)",
    )
    s.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1, ...")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gpus", type=int, default=1, metavar="N", help="N processes under torchrun, one per GPU (DDP)")
    s.add_argument("--overwrite", action="store_true", help="replace a trained model already at --out")
    s.set_defaults(func=lambda a: in_processes(a, cmd_train))  # --gpus N / torchrun: rank 0 prints and saves

    s = sub.add_parser("segment", help="segment images or volumes with a trained model")
    s.add_argument("--model", required=True, help="trained model path or name")
    s.add_argument("--input", required=True, help="image file, folder or glob; or a zarr / OME-Zarr (block by block)")
    s.add_argument(
        "--output",
        required=True,
        help="folder for the label images (same file names; NIfTI as NAME_labels.nii.gz in the scan's voxel "
        "grid), or Y.zarr (labels written block by block), or the input OME-Zarr itself (into its labels/ group)",
    )
    s.add_argument("--tile", type=int, default=512, help="sliding-window tile edge in pixels")
    _tta_flag(s)
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace label files already in --output (an input image is never replaced)",
    )
    add_big_flags(s)
    s.add_argument(
        "--rois",
        action="store_true",
        help="instance models: also write an ImageJ/Fiji ROI set (NAME_rois.zip, one polygon per object) beside the labels",
    )
    s.set_defaults(func=cmd_segment)

    add_share_commands(sub)

    s = sub.add_parser("evaluate", help="score a trained model against label images")
    s.add_argument("--model", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--labels", required=True)
    s.add_argument("--instances", default=None, help="folder of object-id images matched by name (see train)")
    s.add_argument(
        "--ignore-value", type=int, default=None, metavar="V", help="a label value left out of the metrics (e.g. 255)"
    )
    s.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    s.add_argument("--tile", type=int, default=512)
    _tta_flag(s)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "demo", help="open napari with a sample and the plugin's widgets (headless: segment and screenshot)"
    )
    s.add_argument("--out", default="demo-output", help="folder for the headless run's labels and screenshot")
    s.add_argument("--headless", action="store_true", help="run the flow without waiting for a user")
    s.add_argument("--overwrite", action="store_true", help="replace the labels and screenshot of an earlier run")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv, argparse.Namespace(argv=sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            f"segsuite {args.command}: interrupted (a model being trained keeps its best checkpoint).", file=sys.stderr
        )
        return 130
    except (ValueError, KeyError, OSError, RuntimeError, ImportError) as err:  # FileNotFoundError, a missing extra, ...
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"segsuite {args.command}: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"segsuite {args.command}: error: out of memory; use smaller images, a smaller --tile or "
            "--batch-size, or a machine with more memory.",
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # a bug: one line, the traceback with --verbose
        if args.verbose:
            raise
        print(
            f"segsuite {args.command}: internal error: {type(err).__name__}: {_one_line(str(err))} "
            "(run with --verbose for the traceback, and please report it).",
            file=sys.stderr,
        )
        return 1


def _one_line(msg: str) -> str:
    """An error message on one line (libraries' messages may span several)."""
    return " ".join(msg.split()) if "\n" in msg else msg


if __name__ == "__main__":
    sys.exit(main())
