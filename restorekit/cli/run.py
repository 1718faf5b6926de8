"""``restorekit run MODEL``: the same flags for every model plugin.

``--train`` hands a trainable model to the training engine, ``--eval`` prints the
metric table on the test split next to the untouched input, ``--enhance`` writes one
output per input (same stem and size). Every field of the model's ``Options``
dataclass is a ``--field-name`` option that overrides the chosen preset. Run folders,
numbering, the data and the resume rules are the engine's
(:func:`restorekit.engine.run_folder`, :class:`restorekit.engine.TrainJob`); this module
only turns flags into calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any

from restorekit.api import MAX_PROCESSES, Command, Model, TrainableModel
from restorekit.cli._common import (
    PROG,
    Parser,
    add_metric_files,
    expand_inputs,
    json_ready,
    lookup,
    number,
    output_files,
)
from restorekit.errors import (
    DataError,
    ImageReadError,
    RestorekitError,
    UsageError,
    brief,
    warn,
)
from restorekit.plugins import Registry

RUNS_DIR = Path("runs")
MAX_TILE = 16384
"""The largest ``--tile`` side (TrainConfig's largest crop)."""


# -- the command ---------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    """``run [-h] [MODEL [model options...]]``: the model's options are parsed in :func:`run`."""
    parser.add_argument("-h", "--help", action="store_true", help="list the models")
    parser.add_argument("model", nargs="?", help="model name (see 'restorekit plugins')")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the model's options")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Parse the model's options and train, evaluate or enhance."""
    if not args.model or args.model.startswith("-"):
        if args.help or args.model in ("-h", "--help"):
            print(run_help(registry))
            return 0
        raise UsageError("run: name a model, e.g. 'restorekit run classic --eval' "
                         "(models: see 'restorekit run --help')")
    model_cls: type[Model] = lookup(registry.model, args.model, "run")
    margs = model_parser(model_cls).parse_args(args.rest + (["--help"] if args.help else []))
    overrides = {f.name: getattr(margs, f.name) for f in dataclasses.fields(model_cls.Options)
                 if hasattr(margs, f.name)}
    actions = [a for a in ("train", "eval", "enhance") if getattr(margs, a)]
    name = model_cls.name
    if len(actions) != 1:
        raise UsageError(f"run {name}: choose exactly one of --train, --eval, --enhance PATH...")
    if margs.enhance and margs.output is None:
        raise UsageError(f"run {name}: --enhance needs -o/--output DIR")
    if margs.train and not model_cls.trainable:
        raise UsageError(f"run {name}: model {name!r} does not train; use --eval or --enhance")
    if getattr(margs, "nproc_per_node", 0) and not margs.train:
        raise UsageError(f"run {name}: --nproc-per-node goes with --train")
    if margs.train and not margs.nproc_per_node and (
            margs.nnodes != 1 or margs.node_rank or margs.rdzv_endpoint):
        raise UsageError(f"run {name}: --nnodes, --node-rank and --rdzv-endpoint go with "
                         f"--nproc-per-node (under torchrun, give them to torchrun)")
    if margs.tta and margs.train:
        raise UsageError(f"run {name}: --tta goes with --eval or --enhance")
    if margs.score and not margs.enhance:
        raise UsageError(f"run {name}: --score goes with --enhance (--eval always scores)")
    if getattr(margs, "raw_weights", False) and margs.train:
        raise UsageError(f"run {name}: --raw-weights goes with --eval or --enhance")
    margs.argv = ["run", args.model, *args.rest]
    from restorekit.engine.allocator import keep_freed_memory

    keep_freed_memory()  # CPU steps reuse freed activations instead of faulting them in
    if margs.train:
        return _train(model_cls, margs, overrides, registry)
    if margs.eval:
        metrics = _metrics(margs, registry)
        return _eval(_load_for_inference(model_cls, margs, overrides, registry), margs,
                     metrics)
    from restorekit.evaluate import choose_metrics

    metrics = choose_metrics(registry, margs.metrics, ground_truth=False,
                             lpips_weights=margs.lpips_weights,
                             niqe_params=margs.niqe_params) if margs.score else []
    return _enhance(_load_for_inference(model_cls, margs, overrides, registry), margs, metrics)


COMMAND = Command("run", "train, evaluate or apply a model: run MODEL --help", configure, run,
                  add_help=False)


def run_help(registry: Registry) -> str:
    """``restorekit run --help``: the usage line and the registered models."""
    lines = [f"usage: {PROG} run MODEL [--train | --eval | --enhance PATH... -o DIR] "
             "[--data DIR] [--preprocess SPEC] [--metrics NAMES] [options]", "", "models:"]
    for name, cls in sorted(registry.items["models"].items()):
        kind = "trainable" if cls.trainable else "not trainable"
        lines.append(f"  {name:14s} {cls.description} ({kind})")
    lines += ["", f"'{PROG} run MODEL --help' lists the options of one model."]
    return "\n".join(lines)


# -- parser --------------------------------------------------------------------------------
def model_parser(model_cls: type[Model]) -> argparse.ArgumentParser:
    """The parser of ``restorekit run MODEL``: common flags and one per model option."""
    parser = Parser(prog=f"{PROG} run {model_cls.name}", description=model_cls.description)
    add_common_options(parser, model_cls)
    add_model_options(parser, model_cls)
    return parser


def add_common_options(parser: argparse.ArgumentParser, model_cls: type[Model]) -> None:
    act = parser.add_argument_group("what to do")
    act.add_argument("--train", action="store_true", help="train the model (trainable models)")
    act.add_argument("--eval", action="store_true", help="metric table on the test split")
    act.add_argument("--enhance", nargs="+", type=Path, metavar="PATH",
                     help="images or folders to enhance (with -o DIR)")
    g = parser.add_argument_group("data, preprocessing and metrics")
    g.add_argument("--data", type=Path, default=None,
                   help="paired data folder (LOL layout or low/ + high/); "
                        "default: the embedded synthetic low-light set")
    g.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="split scored by --eval (default: test; val: the validation split "
                        "that --train and 'restorekit tune' select on, the one the "
                        "--checkpoint run held out: its --val-fraction and --val-seed)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip (and log) unusable pairs instead of stopping")
    g.add_argument("--preprocess", default=None, metavar="SPEC",
                   help="preprocessor pipeline applied to the low-light input"
                        + (f" (default: {model_cls.default_preprocess!r})"
                           if model_cls.default_preprocess else ""))
    g.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated metrics of the --eval table and the training "
                        "report (default: psnr, ssim, their GT-mean variants, ciede2000 and "
                        "every plugin metric; a no-reference one scores the output alone), "
                        "or of --enhance --score (default: every no-reference metric); "
                        "bare or PLUGIN:NAME, `restorekit plugins --details` lists them all")
    add_metric_files(g, "to --eval and the training report")
    g.add_argument("--tta", action="store_true",
                   help="--eval/--enhance: self-ensemble, the mean over the 8 flips and "
                        "rotations (8x the time; composes with --tile)")
    o = parser.add_argument_group("output")
    o.add_argument("-o", "--output", type=Path, default=None, help="output folder for --enhance")
    o.add_argument("--bits", type=int, choices=(8, 16), default=8, help="output PNG bit depth")
    o.add_argument("--json", action="store_true",
                   help="--eval, --enhance --score: machine-readable table with the "
                        "per-image values")
    o.add_argument("--score", action="store_true",
                   help="--enhance: print the no-reference metrics of the outputs (loe "
                        "against each input)")
    o.add_argument("--overwrite", action="store_true",
                   help="--enhance: replace files already in -o DIR (never an input, never "
                        "through a symbolic link)"
                        + ("; --train: replace an existing run NAME" if model_cls.trainable
                           else ""))
    if model_cls.trainable:
        t = parser.add_argument_group("runs and checkpoints")
        presets = []
        if model_cls.embedded_preset:
            presets.append(f"{model_cls.embedded_preset} on the embedded set")
        if model_cls.default_preset:
            presets.append(f"{model_cls.default_preset} on a --data folder")
        t.add_argument("--preset", default=None, choices=sorted(model_cls.presets) or None,
                       help="option preset (default: " + (", ".join(presets) or "none") + ")")
        t.add_argument("--name", default=None, help=f"run name: {RUNS_DIR}/NAME "
                       "(default: the model name, numbered so no run is overwritten)")
        t.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="folder holding runs")
        t.add_argument("--resume", action="store_true",
                       help="continue the run NAME (default: the newest run of this model) "
                            "from its last checkpoint")
        t.add_argument("--val-fraction", default=None, metavar="F",
                       type=number(float, "--val-fraction", (0.0, 1.0, "[)")),
                       help="--train: share of the training pairs held out as the validation "
                            "split, which every evaluation during training, the best "
                            "checkpoint and --select-metric use (the model trains without "
                            "them); 0: no validation, the last checkpoint is the result; the "
                            "test split is evaluated once, when training ends (default 0.2, "
                            "or the holdout of --config)")
        t.add_argument("--val-seed", default=None, metavar="SEED",
                       type=number(int, "--val-seed", (0, 2**32 - 1)),
                       help="--train: seed choosing the validation pairs (default 0)")
        t.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="--train: the model, options, preprocessing and data of FILE (a "
                            "run's config.json or 'restorekit tune --export-best' output); "
                            "flags given here override them")
        t.add_argument("--checkpoint", type=Path, default=None, metavar="RUN_OR_FILE",
                       help="--eval/--enhance: a run folder or a .safetensors checkpoint "
                            "(default: the newest run of this model)")
        t.add_argument("--raw-weights", action="store_true",
                       help="--eval/--enhance: the trained weights themselves, not their "
                            "moving average (a model trained with --ema)")
        t.add_argument("--tile", type=number(int, "--tile", (0, MAX_TILE)), default=0,
                       help="--enhance: process images in overlapping tiles of this size "
                            f"(64 to {MAX_TILE}; 0 = whole images)")
        t.add_argument("--nproc-per-node", type=number(int, "--nproc-per-node",
                                                       (0, MAX_PROCESSES)),
                       default=0, metavar="N",
                       help="--train: data-parallel over N processes on this machine (one "
                            "per GPU, else CPU processes), launched as torchrun would; "
                            "ignored inside torchrun")
        t.add_argument("--nnodes", type=int, default=1, metavar="N",
                       help="--nproc-per-node on N machines: the same command on each, "
                            "with its own --node-rank and one --rdzv-endpoint")
        t.add_argument("--node-rank", type=int, default=0, metavar="K",
                       help="--nnodes: this machine's rank, 0 to N-1; node 0 keeps the run "
                            "folder")
        t.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                       help="--nnodes: where the nodes meet (node 0's address and a free "
                            "port)")


def _preset_defaults(model_cls: type[Model]) -> list[tuple[str, dict[str, Any]]]:
    """(label, values) of the presets a plain ``--train`` uses, embedded set first."""
    found: list[tuple[str, dict[str, Any]]] = []
    for preset in (model_cls.embedded_preset, model_cls.default_preset):
        if preset and preset in model_cls.presets and preset not in [p for p, _ in found]:
            found.append((preset, model_cls.presets[preset]))
    return found


def add_model_options(parser: argparse.ArgumentParser, model_cls: type[Model]) -> list[str]:
    """One ``--field-name`` option per field of ``model_cls.Options``; help shows preset values."""
    fields = dataclasses.fields(model_cls.Options)
    if not fields:
        return []
    hints = typing.get_type_hints(model_cls.Options)
    group = parser.add_argument_group(f"{model_cls.name} options (override the preset)")
    presets = _preset_defaults(model_cls)
    names = []
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        default = _field_default(f)
        kind = hints.get(f.name)
        shown = f"default {default!r}"
        set_by = [f"{values[f.name]!r} with preset {p}" for p, values in presets
                  if f.name in values]
        if set_by:
            shown = f"{'; '.join(set_by)}; else {default!r}"
        help_text = f.metadata.get("help", "")
        shown = f"{help_text} ({shown})" if help_text else shown
        shown = shown.replace("%", "%%")
        flags = [flag, *f.metadata.get("aliases", ())]  # an old name still accepted
        if kind is bool or isinstance(default, bool):
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=shown)
        else:
            conv: Any = kind if kind in (int, float, str) else type(default)
            if conv in (int, float):
                conv = number(conv, flag, f.metadata.get("range"))
            elif conv is not str:
                conv = str
            group.add_argument(*flags, dest=f.name, type=conv, default=argparse.SUPPRESS,
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
def _pipeline(model_cls: type[Model], spec: str | None, registry: Registry) -> Any:
    from restorekit.pipeline import Pipeline

    return Pipeline.parse(model_cls.default_preprocess if spec is None else spec, registry)


def _metrics(args: argparse.Namespace, registry: Registry) -> list[Any]:
    """The metrics of --eval and the training report (ground truth at hand)."""
    from restorekit.evaluate import choose_metrics

    return choose_metrics(registry, args.metrics, ground_truth=True,
                          lpips_weights=args.lpips_weights, niqe_params=args.niqe_params)


def _resume_hint(model_cls: type[Model], run_dir: Path, runs_dir: Path) -> str:
    return (f"{PROG} run {model_cls.name} --train --resume --name {run_dir.name} "
            f"--runs-dir {runs_dir}")


def _train(model_cls: type[Model], args: argparse.Namespace, overrides: dict,
           registry: Registry) -> int:
    from restorekit.engine import distributed

    if args.nproc_per_node and not distributed.launched():
        return distributed.launch(args.nproc_per_node, ["-m", "restorekit", *args.argv],
                                  args.nnodes, args.node_rank, args.rdzv_endpoint)
    try:
        dist = distributed.setup()  # under torchrun: join the process group
        return _train_here(model_cls, args, overrides, registry, dist)
    except RestorekitError as exc:
        distributed.reported(exc, f"{PROG}: error: {exc}")
        raise
    finally:
        distributed.shutdown()


def _train_here(model_cls: type[Model], args: argparse.Namespace, overrides: dict,
                registry: Registry, dist: Any) -> int:
    from restorekit.data import Holdout
    from restorekit.engine import TrainJob, run_folder
    from restorekit.engine.callbacks import select_metric
    from restorekit.evaluate import FILE_METRICS

    start = time.perf_counter()
    if args.resume:
        if args.preset or args.preprocess is not None:
            raise UsageError("--resume continues a run with its stored options; drop "
                             "--preset/--preprocess (or start a new run)")
        if args.val_fraction is not None or args.val_seed is not None:
            raise UsageError("--resume continues a run with its stored validation split; "
                             "drop --val-fraction/--val-seed (or start a new run)")
        dist.agree(_given(model_cls, args))  # the stored options come from the main process
    run = run_folder(args.runs_dir, model_cls.name, args.name, resume=args.resume,
                     overwrite=args.overwrite)
    job = TrainJob(registry, skip_bad=args.skip_bad, metrics=_metrics(args, registry),
                   holdout=Holdout())
    if args.resume:
        result = job.resume(run, **overrides)
    else:
        preset = args.preset
        job.data = str(args.data) if args.data is not None else None
        if args.config is not None:
            stored = read_config_file(args.config, model_cls)
            overrides = {**stored["options"], **overrides}
            if args.preprocess is None:
                args.preprocess = stored["preprocess"]
            if args.data is None:
                job.data = stored["data_path"]
            job.holdout = stored["holdout"]
        elif preset is None and args.data is None:
            preset = model_cls.embedded_preset
        if args.val_fraction is not None or args.val_seed is not None:
            base = job.holdout or Holdout()  # what --config or the default says
            fraction = base.fraction if args.val_fraction is None else args.val_fraction
            seed = base.seed if args.val_seed is None else args.val_seed
            job.holdout = Holdout(fraction, seed) if fraction > 0 else None
        options = model_cls.make_options(preset, **overrides)
        # An unknown or directionless --select-metric: one line before any work.
        select_metric(getattr(options, "select_metric", ""), job.metrics or [],
                      known=[m.name for m in registry.metrics()] + list(FILE_METRICS))
        preprocess = _pipeline(model_cls, args.preprocess, registry)
        # Before the first collective that depends on them: ranks started with other options
        # (a node launched by hand with another --data, another config file) stop here, all
        # with the same line.
        dist.agree({**_given(model_cls, args), "--data": job.data, "--preset": preset,
                    "--preprocess": str(preprocess),
                    "the validation split": job.holdout and job.holdout.to_dict(),
                    **{"--" + f.name.replace("_", "-"): getattr(options, f.name)
                       for f in dataclasses.fields(options)}})
        where = "the embedded synthetic low-light set" if job.data is None else job.data
        shown = preset or model_cls.default_preset
        print(f"training {model_cls.name} on {where}"
              + (f" with preset {shown}" if shown else "") + f" -> {run}")
        model = typing.cast(TrainableModel, model_cls(options, preprocess))
        result = job.train(model, run, overwrite=args.overwrite)
    took = time.perf_counter() - start
    hint = _resume_hint(model_cls, result.run_dir, args.runs_dir)
    if result.stopped == "interrupted":
        print(f"interrupted after step {result.step}; continue with: {hint}", file=sys.stderr)
        return 130
    if result.stopped != "completed":
        print(f"stopped ({result.stopped}) after step {result.step}; continue with: {hint}")
    if result.metrics:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"last validation metrics: {scores}")
    from restorekit.engine import RunDir
    from restorekit.engine.report import selection, selection_text

    chosen = selection_text(selection(RunDir(result.run_dir)))
    if chosen:
        where = result.best_checkpoint or result.checkpoint
        print(f"{chosen} ({where}; --checkpoint RUN uses the last checkpoint)")
    if result.test:  # the full table is printed above
        rows = result.test["results"]
        names = [m.name for m in job.metrics or []]
        name = result.best.metric if result.best else "psnr" if "psnr" in names else names[0]
        scores = ", ".join(f"{which} checkpoint {rows[which][name]:.4f}" for which in rows)
        print(f"test {name} ({result.test['pairs']} pairs, evaluated once after training): "
              f"{scores}")
    print(f"done in {took:.0f} s; report: {result.report}")
    return 0


def _given(model_cls: type[Model], args: argparse.Namespace) -> dict[str, Any]:
    """The model and each flag of ``run MODEL`` as parsed, by flag name (for ``agree``).

    The launcher's flags are left out: each node has its own ``--node-rank``.
    """
    launcher = ("argv", "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint")
    flags = {"--" + k.replace("_", "-"): v for k, v in vars(args).items() if k not in launcher}
    return {"MODEL": model_cls.name, **flags}


def read_config_file(path: Path, model_cls: type[Model]) -> dict[str, Any]:
    """What a run's ``config.json`` (or ``tune --export-best`` output) sets for ``model_cls``:
    ``options`` (old option names renamed), ``preprocess``, ``data_path`` and ``holdout``
    (the validation split: None for ``null``, the default where absent), each checked
    against its type (and an option against its declared range); anything else is one line
    naming ``path``."""
    from restorekit.api import field_problem
    from restorekit.data import Holdout

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config: {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config: {path}: not UTF-8 text (expected a JSON config such as "
                         f"a run's config.json)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--config: {path}: not a JSON config ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("options"), dict):
        raise UsageError(f"--config: {path}: no 'options' table (expected a run's "
                         f"config.json)")
    if config.get("model") != model_cls.name:
        raise UsageError(f"--config: {path} configures model {config.get('model')!r}, not "
                         f"{model_cls.name!r}")

    def bad(key: str, problem: str) -> UsageError:
        return UsageError(f"--config: {path}: field {key!r}: {problem}")

    from restorekit.engine.state import renamed_options

    config["options"] = renamed_options(config["options"])
    fields = {f.name: f for f in dataclasses.fields(model_cls.Options)}
    unknown = sorted(set(config["options"]) - set(fields))
    if unknown:
        raise UsageError(f"--config: {path}: model {model_cls.name!r} has no option "
                         f"{unknown[0]!r}")
    options = {}
    for key, value in config["options"].items():
        if isinstance(value, list) and isinstance(_field_default(fields[key]), tuple):
            value = tuple(value)
        problem = field_problem(fields[key], value)
        if problem:
            raise bad(f"options.{key}", problem)
        options[key] = value
    for key in ("preprocess", "data"):
        if not isinstance(config.get(key, ""), (str, type(None))):
            raise bad(key, f"expected a string, got {brief(config[key])}")
    extra = {} if config.get("extra") is None else config["extra"]
    if not isinstance(extra, dict):
        raise bad("extra", f"expected a table, got {brief(extra)}")
    data_path = extra.get("data_path")
    if not isinstance(data_path, (str, type(None))):
        raise bad("extra.data_path", f"expected a folder name or null, got {brief(data_path)}")
    try:  # null: no validation split; absent: the default one
        holdout = Holdout.from_dict(extra["holdout"]) if "holdout" in extra else Holdout()
    except ValueError as exc:
        raise bad("extra.holdout", str(exc)) from None
    return {"options": options, "preprocess": config.get("preprocess") or "",
            "data_path": data_path, "holdout": holdout}


def _load_for_inference(model_cls: type[Model], args: argparse.Namespace,
                        overrides: dict, registry: Registry) -> Model:
    if not model_cls.trainable:
        options = model_cls.make_options(None, **overrides)
        return model_cls(options, _pipeline(model_cls, args.preprocess, registry))
    from restorekit.engine import RunDir, load_trained

    device = overrides.pop("device", "auto")  # where to run it may change, not what it is
    if args.preprocess is not None or overrides:
        named = ", ".join("--" + k.replace("_", "-") for k in overrides) or "--preprocess"
        raise UsageError(f"a trained model runs with the options and --preprocess stored "
                         f"in its checkpoint; drop {named}")
    checkpoint = args.checkpoint
    if checkpoint is None:
        newest = RunDir.newest(args.runs_dir, model_cls.name)
        if newest is None:
            raise UsageError(f"--checkpoint: no run of {model_cls.name} with a checkpoint in "
                             f"{args.runs_dir}; train one with --train or pass --checkpoint "
                             "RUN_OR_FILE")
        checkpoint = newest.path
        print(f"using the newest run: {checkpoint}", file=sys.stderr)
    args.checkpoint_used = checkpoint  # --split val/train: the run's own holdout
    model = load_trained(checkpoint, registry, device=device)
    if type(model).name != model_cls.name:
        raise UsageError(f"--checkpoint: {checkpoint} holds a {type(model).name!r} model, "
                         f"not {model_cls.name!r}")
    if args.raw_weights and not model.use_raw_weights():
        raise UsageError(f"--raw-weights: {checkpoint} keeps no moving average of its "
                         f"weights (trained without --ema); its weights are the raw ones")
    return model


def _with_tta(enhance: Any, tta: bool) -> Any:
    """``enhance``, or its self-ensemble over the 8 flips and rotations."""
    if not tta:
        return enhance
    from restorekit.data.ensemble import self_ensemble

    return functools.partial(self_ensemble, enhance)


def _trained_holdout(args: argparse.Namespace) -> Any:
    """The validation split the run of ``--checkpoint`` held out (its ``config.json``), so
    that ``--split val`` scores the pairs it selected on and ``--split train`` the pairs it
    trained on; the default holdout for a model outside a run folder."""
    from restorekit.data import Holdout
    from restorekit.engine import RunDir

    used = getattr(args, "checkpoint_used", None)
    if used is None:
        return Holdout()
    path = Path(used)
    run = RunDir(path if path.is_dir() else path.parent.parent)
    extra = run.read_config().get("extra", {}) if run.config_path.is_file() else {}
    if "holdout" not in extra:
        return Holdout()
    try:
        holdout = Holdout.from_dict(extra["holdout"])
    except ValueError as exc:
        raise UsageError(f"{run.config_path}: field 'extra.holdout': {exc}") from None
    if holdout is None and args.split == "val":
        raise UsageError(f"--split val: {run.path} was trained without a validation split "
                         f"(--val-fraction 0)")
    return holdout


def _eval(model: Model, args: argparse.Namespace, metrics: list[Any]) -> int:
    from restorekit.data import open_pairs
    from restorekit.evaluate import evaluate, format_table

    holdout = _trained_holdout(args) if args.split != "test" else None
    pairs = _big_enough(open_pairs(args.data, args.split, skip_bad=args.skip_bad,
                                   holdout=holdout), model, metrics, args.skip_bad)
    label = type(model).name
    if str(model.preprocess):
        label += f" ({model.preprocess})"
    if args.tta:
        label += " x8 self-ensemble"
    rows = {"identity": evaluate(pairs, None, metrics, desc="identity"),
            label: evaluate(pairs, _with_tta(model.enhance, args.tta), metrics,
                            desc=type(model).name)}
    if args.json:
        print(json.dumps(json_ready({
            "data": pairs.describe(), "split": args.split, "rows": rows,
            "intervals": {k: r.to_json()["interval"] for k, r in rows.items()},
            "images": {k: r.images for k, r in rows.items()}}), indent=2, allow_nan=False))
    else:
        print(f"{pairs.describe()} ({args.split} split)")
        print(format_table(rows, metrics))
    return 0


def _enhance(model: Model, args: argparse.Namespace, metrics: list[Any]) -> int:
    """Write one output per input; with ``metrics`` (--score), print their table."""
    from tqdm import tqdm

    from restorekit.data import image_size, read_image, write_image
    from restorekit.evaluate import Evaluation, format_table, score

    files = expand_inputs(args.enhance)
    outputs = output_files(args.output, args.enhance, files, overwrite=args.overwrite)
    targets = dict(zip(files, outputs, strict=True))
    usable = []
    for path in files:  # sizes first: a batch must not stop halfway on a too-small image
        try:
            model.check_image(*image_size(path))
        except (ImageReadError, ValueError) as exc:
            message = str(exc) if isinstance(exc, ImageReadError) else f"{path}: {exc}"
            if not args.skip_bad:
                raise DataError(message) from None
            warn(f"skipped {message}")
            continue
        usable.append(path)
    enhance = model.enhance
    tile = getattr(args, "tile", 0)
    if tile:
        if tile < 64:
            raise UsageError("--tile: tiles must be at least 64 pixels")
        enhance = functools.partial(model.enhance, tile=tile)
    enhance = _with_tta(enhance, args.tta)
    written, scores, failed = 0, {}, {}
    for path in tqdm(usable, desc=f"enhance ({type(model).name})", unit="img"):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            if not args.skip_bad:
                raise
            warn(f"skipped {exc}")
            continue
        output = enhance(image)
        write_image(targets[path], output, bits=args.bits)
        written += 1
        if metrics:  # the output as written: 8- or 16-bit levels
            output = read_image(targets[path])
            scores[targets[path].name] = score(output, None, metrics, what=str(path),
                                               source=image, failed=failed)
    print(f"wrote {written} image(s) to {args.output}"
          + (f" ({len(files) - written} skipped)" if written < len(files) else ""),
          file=sys.stderr if metrics and args.json else sys.stdout)  # stdout: the JSON alone
    if scores:
        result = Evaluation(scores, metrics, failed)
        if args.json:
            print(json.dumps(json_ready(result.to_json()), indent=2, allow_nan=False))
        else:
            print(format_table({**result.images, "mean": result}, metrics))
    return 0


def _big_enough(pairs: Any, model: Model, metrics: list[Any], skip_bad: bool) -> Any:
    """``pairs``, checked up front (from the file headers) against the smallest image the
    model and the metrics take; a too-small pair is an error naming it, or skipped."""
    from restorekit.data import image_size

    paths = getattr(pairs, "low_paths", None)
    if paths is None:
        return pairs
    side = max([model.min_image_size(), *(m.min_size for m in metrics)])
    keep = []
    for i, path in enumerate(paths):
        h, w = image_size(path)
        if min(h, w) >= side:
            keep.append(i)
            continue
        message = f"{path}: image is {h}x{w} (HxW), smaller than the {side}x{side} needed"
        if not skip_bad:
            raise DataError(message)
        warn(f"skipped {message}")
    if not keep:
        raise DataError(f"{pairs.describe()}: every pair is too small ({side}x{side} needed)")
    if len(keep) == len(pairs):
        return pairs
    from restorekit.data import SubsetPairs

    return SubsetPairs(pairs, keep, f"{len(pairs) - len(keep)} too small, skipped", fixed=True)
