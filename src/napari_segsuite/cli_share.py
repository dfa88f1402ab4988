"""The CLI's sharing commands: ``segsuite export`` (bioimage.io, ONNX, TorchScript) and ``segsuite import``."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    sample = None
    if args.sample:
        from .io import read_image_info

        sample = read_image_info(args.sample).data
    package = {"authors": args.author, "license": args.license, "run_test": not args.no_test}
    result = export(
        args.model,
        args.format,
        args.out,
        overwrite=args.overwrite,
        sample=sample,
        **(package if args.format == "bioimageio" else {}),
    )
    print(result.summary())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .store import import_model

    print(import_model(args.file, name=args.name))
    return 0


def add_share_commands(sub: Any) -> None:
    """Add ``export`` and ``import`` to the CLI's subcommands (``sub``: argparse's subparsers)."""
    s = sub.add_parser("export", help="export a trained model as a bioimage.io package, ONNX or TorchScript")
    s.add_argument("--model", required=True, help="trained model name or path (or a bioimage.io package of ours)")
    s.add_argument("--format", required=True, choices=["bioimageio", "onnx", "torchscript"])
    s.add_argument("--out", required=True, help="file (onnx, torchscript), or folder or .zip file (bioimageio)")
    s.add_argument("--sample", default=None, help="an image to check the export on and make the test tensors from")
    s.add_argument("--author", action="append", help="bioimageio: an author's name, repeatable (default: your login)")
    s.add_argument("--license", default="CC-BY-4.0", help="bioimageio: SPDX licence of the weights (default CC-BY-4.0)")
    s.add_argument("--no-test", action="store_true", help="bioimageio: validate only, skip bioimage.io's model test")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="add a model (.segsuite.zip or a bioimage.io package of ours) to the store")
    s.add_argument("file", help="the .segsuite.zip, or the bioimage.io package (folder or .zip)")
    s.add_argument("--name", default=None, help="name in the store (default: the model's own)")
    s.set_defaults(func=cmd_import)
