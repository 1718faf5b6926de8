"""``restorekit run MODEL``: the same flags for every model plugin.

``--train`` hands a trainable model to the training engine, ``--eval`` prints the
metric table on the test split next to the untouched input, ``--enhance`` writes one
output per input (same stem and size). Every field of the model's ``Options``
dataclass is a ``--field-name`` option that overrides the chosen preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from restorekit.api import Model, TrainableModel
from restorekit.errors import ImageReadError, PluginError, UsageError

RUNS_DIR = Path("runs")
RESUME_OVERRIDABLE = {"max_steps", "max_minutes", "device", "num_workers"}
"""Options that ``--resume`` accepts: they change where and how long, not what is trained."""


def run_model(name: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for model ``name`` and do what it asks."""
    from restorekit.cli import _Parser
    from restorekit.plugins import get_registry

    try:
        model_cls: type[Model] = get_registry().model(name)
    except PluginError as exc:
        raise UsageError(f"run: {exc}") from None

    parser = _Parser(prog=f"restorekit run {name}", description=model_cls.description)
    _add_common_options(parser, model_cls)
    option_names = _add_model_options(parser, model_cls)
    args = parser.parse_args(list(argv))
    overrides = {k: getattr(args, k) for k in option_names if hasattr(args, k)}

    actions = [a for a in ("train", "eval", "enhance") if getattr(args, a)]
    if len(actions) != 1:
        raise UsageError(f"run {name}: choose exactly one of --train, --eval, --enhance PATH...")
    if args.enhance and args.output is None:
        raise UsageError(f"run {name}: --enhance needs -o/--output DIR")
    if args.train and not model_cls.trainable:
        raise UsageError(f"run {name}: model {name!r} does not train; use --eval or --enhance")
    if args.train:
        return _train(model_cls, args, overrides)
    model = _load_for_inference(model_cls, args, overrides)
    if args.eval:
        return _eval(model, args)
    return _enhance(model, args)


# -- parser --------------------------------------------------------------------------------
def _add_common_options(parser: argparse.ArgumentParser, model_cls: type[Model]) -> None:
    act = parser.add_argument_group("what to do")
    act.add_argument("--train", action="store_true", help="train the model (trainable models)")
    act.add_argument("--eval", action="store_true", help="metric table on the test split")
    act.add_argument("--enhance", nargs="+", type=Path, metavar="PATH",
                     help="images or folders to enhance (with -o DIR)")
    g = parser.add_argument_group("data and preprocessing")
    g.add_argument("--data", type=Path, default=None,
                   help="paired data folder (LOL layout or low/ + high/); "
                        "default: the embedded synthetic low-light set")
    g.add_argument("--split", choices=("train", "test"), default="test",
                   help="split scored by --eval (default: test)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip (and log) unusable pairs instead of stopping")
    g.add_argument("--preprocess", default=None, metavar="SPEC",
                   help="preprocessor pipeline applied to the low-light input"
                        + (f" (default: {model_cls.default_preprocess!r})"
                           if model_cls.default_preprocess else ""))
    o = parser.add_argument_group("output")
    o.add_argument("-o", "--output", type=Path, default=None, help="output folder for --enhance")
    o.add_argument("--bits", type=int, choices=(8, 16), default=8, help="output PNG bit depth")
    o.add_argument("--json", action="store_true", help="--eval: machine-readable table")
    if model_cls.trainable:
        t = parser.add_argument_group("runs and checkpoints")
        t.add_argument("--preset", default=None, choices=sorted(model_cls.presets) or None,
                       help="option preset (default: "
                            f"{model_cls.embedded_preset} on the embedded "
                            f"set, {model_cls.default_preset} on a --data folder)")
        t.add_argument("--name", default=None, help=f"run name: {RUNS_DIR}/NAME "
                       "(default: the model name, numbered so no run is overwritten)")
        t.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="folder holding runs")
        t.add_argument("--resume", action="store_true",
                       help="continue the run NAME (default: the newest run of this model) "
                            "from its last checkpoint")
        t.add_argument("--overwrite", action="store_true", help="replace an existing run NAME")
        t.add_argument("--checkpoint", type=Path, default=None, metavar="RUN_OR_FILE",
                       help="--eval/--enhance: a run folder or a .safetensors checkpoint "
                            "(default: the newest run of this model)")
        t.add_argument("--tile", type=int, default=0,
                       help="--enhance: process images in overlapping tiles of this size")


def _add_model_options(parser: argparse.ArgumentParser, model_cls: type[Model]) -> list[str]:
    """One ``--field-name`` option per field of ``model_cls.Options``."""
    fields = dataclasses.fields(model_cls.Options)
    if not fields:
        return []
    hints = typing.get_type_hints(model_cls.Options)
    group = parser.add_argument_group(f"{model_cls.name} options (override the preset)")
    names = []
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        default = _field_default(f)
        kind = hints.get(f.name)
        help_text = f.metadata.get("help", "")
        shown = f"{help_text} (default {default!r})" if help_text else f"default {default!r}"
        if kind is bool or isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=shown)
        else:
            conv = kind if kind in (int, float, str) else type(default)
            if conv not in (int, float, str):
                conv = str
            group.add_argument(flag, dest=f.name, type=conv, default=argparse.SUPPRESS,
                               help=shown)
        names.append(f.name)
    return names


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# -- actions -------------------------------------------------------------------------------
def _pipeline(model_cls: type[Model], spec: str | None) -> Any:
    from restorekit.pipeline import Pipeline

    return Pipeline.parse(model_cls.default_preprocess if spec is None else spec)


def _train(model_cls: type[Model], args: argparse.Namespace, overrides: dict) -> int:
    from restorekit.data import open_pairs
    from restorekit.engine import train

    run_dir = _choose_run_dir(model_cls, args)
    if args.resume:
        # A resumed run keeps its stored options but for the limits and the device.
        fixed = sorted(set(overrides) - RESUME_OVERRIDABLE)
        if fixed or args.preset or args.preprocess is not None:
            named = ", ".join("--" + f.replace("_", "-") for f in fixed) or "the overrides"
            raise UsageError(f"--resume continues a run with its stored options; drop "
                             f"{named} (or start a new run)")
        stored = _read_run_config(run_dir)
        limits = {"max_steps": 0, "max_minutes": 0.0}
        options = model_cls.make_options(None, **{**stored["options"], **limits, **overrides})
        preprocess = _pipeline(model_cls, stored.get("preprocess", ""))
        data = stored.get("extra", {}).get("data_path")
    else:
        preset = args.preset
        if preset is None and args.data is None:
            preset = model_cls.embedded_preset
        options = model_cls.make_options(preset, **overrides)
        preprocess = _pipeline(model_cls, args.preprocess)
        data = str(args.data) if args.data is not None else None
        where = "the embedded synthetic low-light set" if data is None else data
        print(f"training {model_cls.name} on {where} with preset "
              f"{preset or model_cls.default_preset or 'none'} -> {run_dir}")
    model = typing.cast(TrainableModel, model_cls(options, preprocess))
    seed = int(getattr(options, "seed", 0))
    train_pairs = open_pairs(data, "train", seed=seed, skip_bad=args.skip_bad)
    test_pairs = open_pairs(data, "test", seed=seed, skip_bad=args.skip_bad)
    start = time.perf_counter()
    result = train(model, train_pairs=train_pairs, test_pairs=test_pairs, run_dir=run_dir,
                   resume=args.resume, overwrite=args.overwrite,
                   extra_config={"data_path": data})
    took = time.perf_counter() - start
    if result.stopped == "interrupted":
        print(f"interrupted after step {result.step}; continue with: restorekit run "
              f"{model_cls.name} --train --resume --name {run_dir.name}", file=sys.stderr)
        return 130
    if result.stopped != "completed":
        print(f"stopped ({result.stopped}) after step {result.step}; continue with --resume")
    if result.metrics:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"final test metrics: {scores}")
    if result.best_psnr is not None:
        print(f"best test PSNR during training {result.best_psnr:.4f} "
              "(checkpoints/best.safetensors; --checkpoint RUN uses the last checkpoint)")
    print(f"done in {took:.0f} s; report: {result.report}")
    return 0


def _read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume: {run_dir} is not a run folder (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--resume: {path} is corrupt ({exc})") from None


def _runs_of(model_cls: type[Model], runs_dir: Path) -> list[Path]:
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and (p / "config.json").exists()]
    mine = []
    for p in runs:
        try:
            if json.loads((p / "config.json").read_text()).get("model") == model_cls.name:
                mine.append(p)
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(mine, key=lambda p: p.stat().st_mtime)


def _choose_run_dir(model_cls: type[Model], args: argparse.Namespace) -> Path:
    runs_dir: Path = args.runs_dir
    if args.name:
        run_dir = runs_dir / args.name
        if args.resume and not run_dir.exists():
            raise UsageError(f"--resume: no run {run_dir}")
        return run_dir
    if args.resume:
        runs = _runs_of(model_cls, runs_dir)
        if not runs:
            raise UsageError(f"--resume: no run of {model_cls.name} in {runs_dir}; "
                             "name one with --name")
        return runs[-1]
    run_dir = runs_dir / model_cls.name
    if args.overwrite:
        return run_dir
    n = 1
    while run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = runs_dir / f"{model_cls.name}-{n}"
    return run_dir


def _load_for_inference(model_cls: type[Model], args: argparse.Namespace,
                        overrides: dict) -> Model:
    if not model_cls.trainable:
        options = model_cls.make_options(None, **overrides)
        return model_cls(options, _pipeline(model_cls, args.preprocess))
    from restorekit.engine import load_trained
    from restorekit.plugins import get_registry

    if args.preprocess is not None or overrides:
        raise UsageError("a trained model runs with the options and --preprocess stored "
                         "in its checkpoint; drop the overrides")
    checkpoint = args.checkpoint
    if checkpoint is None:
        runs = _runs_of(model_cls, args.runs_dir)
        if not runs:
            raise UsageError(f"--checkpoint: no run of {model_cls.name} in {args.runs_dir}; "
                             "train one with --train or pass --checkpoint RUN_OR_FILE")
        checkpoint = runs[-1]
        print(f"using the newest run: {checkpoint}", file=sys.stderr)
    model = load_trained(checkpoint, get_registry().model)
    if type(model).name != model_cls.name:
        raise UsageError(f"--checkpoint: {checkpoint} holds a {type(model).name!r} model, "
                         f"not {model_cls.name!r}")
    return model


def _eval(model: Model, args: argparse.Namespace) -> int:
    from restorekit.data import open_pairs
    from restorekit.evaluate import default_metrics, evaluate, format_table

    pairs = open_pairs(args.data, args.split, skip_bad=args.skip_bad)
    metrics = default_metrics()
    label = type(model).name
    if str(model.preprocess):
        label += f" ({model.preprocess})"
    rows = {"identity": evaluate(pairs, None, metrics, desc="identity"),
            label: evaluate(pairs, model.enhance, metrics, desc=type(model).name)}
    if args.json:
        print(json.dumps({"data": pairs.describe(), "split": args.split, "rows": rows},
                         indent=2))
    else:
        print(f"{pairs.describe()} ({args.split} split)")
        print(format_table(rows, metrics))
    return 0


def _enhance(model: Model, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from restorekit.cli import _expand_inputs
    from restorekit.data import read_image, write_image

    files = _expand_inputs(args.enhance)
    enhance = model.enhance
    tile = getattr(args, "tile", 0)
    if tile:
        enhance = _tiled(model, tile)
    written = 0
    for path in tqdm(files, desc=f"enhance ({type(model).name})", unit="img"):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if not args.skip_bad:
                raise
            tqdm.write(f"restorekit: warning: skipped {exc}", file=sys.stderr)
            continue
        write_image(args.output / f"{path.stem}.png", enhance(image), bits=args.bits)
        written += 1
    print(f"wrote {written} image(s) to {args.output}"
          + (f" ({len(files) - written} skipped)" if written < len(files) else ""))
    return 0


def _tiled(model: Model, tile: int) -> Any:
    import torch

    from restorekit.data import to_image, to_tensor
    from restorekit.engine import enhance_tiled

    if tile < 64:
        raise UsageError("--tile: tiles must be at least 64 pixels")
    trained = typing.cast(TrainableModel, model)

    def enhance(image: Any) -> Any:
        net = next(iter(trained.networks().values()))
        device = next(net.parameters()).device
        x = to_tensor(trained.preprocess(image)).unsqueeze(0).to(device)
        with torch.no_grad():
            y = enhance_tiled(trained.enhance_tensor, x, tile)
        return to_image(y[0])

    return enhance
