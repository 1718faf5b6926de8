"""The ``restorekit`` command line.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from restorekit.errors import RestorekitError, UsageError

PROG = "restorekit"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``UsageError`` (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``restorekit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except RestorekitError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Image restoration toolkit: low-light "
                     "enhancement with GANs, extensible through plugins.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plugins", help="list plugins and what they register")
    p.add_argument("--hooks", action="store_true", help="show which plugin implements which hook")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("preprocess", help="apply a preprocessor pipeline to images")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--preprocess", required=True, metavar="SPEC",
                   help='pipeline, e.g. "autogamma,clahe:clip=0.01,denoise:method=tv"')
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("metrics", help="score predictions against ground truth by file stem")
    p.add_argument("pred_dir", type=Path)
    p.add_argument("gt_dir", type=Path)
    p.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated metric names (default: every registered metric)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("run", help="train, evaluate or apply a model: run MODEL --help",
                       add_help=False)
    p.add_argument("model", nargs="?", help="model name (see 'restorekit plugins')")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ext", help="status of the C++/CUDA extension")
    p.set_defaults(func=cmd_ext)

    from restorekit.scaffold import add_parser as add_new_plugin_parser

    add_new_plugin_parser(sub)
    return parser


# -- plugins -------------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    from restorekit.plugins import KINDS, get_plugin_manager

    pm = get_plugin_manager()
    registry = pm.registry
    infos = list(registry.plugins.values())
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    for info in infos:
        status = f"FAILED: {info.error}" if info.error else "ok"
        print(f"{info.name}  {info.version}  ({info.source})  {status}")
        for kind in KINDS:
            if info.registered[kind]:
                print(f"    {kind}: {', '.join(info.registered[kind])}")
        if args.hooks and info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    return 0


# -- preprocess ----------------------------------------------------------------------------
def cmd_preprocess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from restorekit.data import read_image, write_image
    from restorekit.pipeline import Pipeline

    pipeline = Pipeline.parse(args.preprocess)
    files = _expand_inputs(args.inputs)
    for path in tqdm(files, desc=f"preprocess {pipeline}", unit="img"):
        out = args.output / f"{path.stem}.png"
        write_image(out, pipeline(read_image(path)), bits=args.bits)
    print(f"wrote {len(files)} image(s) to {args.output}")
    return 0


def _expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    from restorekit.data import list_images

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UsageError(f"{path}: folder holds no images")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise UsageError(f"several inputs share the stem {clash[0]!r}; outputs would collide")
    return files


# -- metrics -------------------------------------------------------------------------------
def cmd_metrics(args: argparse.Namespace) -> int:
    from restorekit.data import list_images, read_image
    from restorekit.errors import DataError
    from restorekit.evaluate import format_table
    from restorekit.plugins import get_registry

    registry = get_registry()
    names = (args.metrics.split(",") if args.metrics
             else sorted(registry.items["metrics"]))
    metrics = [_lookup(registry.metric, n.strip(), "--metrics") for n in names]
    for folder in (args.pred_dir, args.gt_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a folder")
    preds = {p.stem: p for p in list_images(args.pred_dir)}
    gts = {p.stem: p for p in list_images(args.gt_dir)}
    common = sorted(preds.keys() & gts.keys())
    if not common:
        raise DataError(f"no file stems in common between {args.pred_dir} and {args.gt_dir}")
    missing = sorted(gts.keys() - preds.keys())
    if missing:
        print(f"{PROG}: warning: {len(missing)} ground-truth image(s) have no prediction, "
              f"e.g. {gts[missing[0]]}", file=sys.stderr)
    per_image: dict[str, dict[str, float]] = {}
    for stem in common:
        pred, gt = read_image(preds[stem]), read_image(gts[stem])
        if pred.shape != gt.shape:
            raise DataError(f"{preds[stem]} is {pred.shape[1]}x{pred.shape[0]} but "
                            f"{gts[stem]} is {gt.shape[1]}x{gt.shape[0]}")
        per_image[stem] = {m.name: float(m.fn(pred, gt)) for m in metrics}
    mean = {m.name: sum(r[m.name] for r in per_image.values()) / len(per_image)
            for m in metrics}
    if args.json:
        print(json.dumps({"mean": mean, "images": per_image, "count": len(per_image)},
                         indent=2))
    else:
        print(format_table({**per_image, "mean": mean}, metrics))
    return 0


def _lookup(getter: Any, name: str, option: str) -> Any:
    from restorekit.errors import PluginError

    try:
        return getter(name)
    except PluginError as exc:
        raise UsageError(f"{option}: {exc}") from None


# -- ext -----------------------------------------------------------------------------------
def cmd_ext(args: argparse.Namespace) -> int:
    import restorekit.ext as ext

    print(ext.describe())
    return 0 if ext.status().get("built") else 1


# -- run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from restorekit.engine.allocator import keep_freed_memory
    from restorekit.run import run_model

    if not args.model or args.model.startswith("-"):
        if args.model in ("-h", "--help") or "-h" in args.rest or "--help" in args.rest:
            _print_run_help()
            return 0
        raise UsageError("run: name a model, e.g. 'restorekit run classic --eval' "
                         "(models: see 'restorekit plugins')")
    keep_freed_memory()  # CPU steps reuse freed activations instead of faulting them in
    return run_model(args.model, args.rest)


def _print_run_help() -> None:
    from restorekit.plugins import get_registry

    models = get_registry().items["models"]
    print("usage: restorekit run MODEL [--train | --eval | --enhance PATH... -o DIR] "
          "[--data DIR] [--preprocess SPEC] [options]\n\nmodels:")
    for name, cls in sorted(models.items()):
        kind = "trainable" if cls.trainable else "not trainable"
        print(f"  {name:14s} {cls.description} ({kind})")
    print("\n'restorekit run MODEL --help' lists the options of one model.")


def _version() -> str:
    from restorekit import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
