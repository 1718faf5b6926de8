"""``restorekit preprocess``: apply a preprocessor pipeline to images."""

from __future__ import annotations

import argparse
from pathlib import Path

from restorekit.api import Command
from restorekit.cli._common import expand_inputs, output_files, usable_names
from restorekit.plugins import Registry, get_registry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    names = ", ".join(n for n, _ in usable_names(get_registry(), "preprocessors"))
    parser.add_argument("--preprocess", required=True, metavar="SPEC",
                        help='pipeline, e.g. "autogamma,clahe:clip=0.01,denoise:method=tv" '
                             f'(PLUGIN:NAME picks one of two plugins\' NAME); preprocessors: '
                             f'{names}; `restorekit plugins --details NAME` shows the '
                             f'parameters, defaults and ranges of one')
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files already in the output folder (never an input, "
                             "never through a symbolic link)")


def run(args: argparse.Namespace, registry: Registry) -> int:
    from tqdm import tqdm

    from restorekit.data import read_image, write_image
    from restorekit.pipeline import Pipeline

    pipeline = Pipeline.parse(args.preprocess, registry)
    files = expand_inputs(args.inputs)
    targets = output_files(args.output, args.inputs, files, overwrite=args.overwrite)
    for path, target in tqdm(list(zip(files, targets, strict=True)),
                             desc=f"preprocess {pipeline}", unit="img"):
        write_image(target, pipeline(read_image(path)), bits=args.bits)
    print(f"wrote {len(files)} image(s) to {args.output}")
    return 0


COMMAND = Command("preprocess", "apply a preprocessor pipeline to images", configure, run)
