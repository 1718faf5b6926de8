"""``restorekit tune MODEL``: hyperparameter and preprocessing studies (Optuna).

This module turns flags into calls of :mod:`restorekit.tune`; the trials are ordinary
training runs of the engine, and the study stays readable by plain Optuna.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from restorekit.api import Command
from restorekit.cli._common import PROG, number
from restorekit.errors import UsageError
from restorekit.plugins import Registry

STUDIES_DIR = Path("studies")


def configure(parser: argparse.ArgumentParser) -> None:
    """The flags of ``restorekit tune``."""
    parser.add_argument("model", nargs="?", help="trainable model to tune")
    s = parser.add_argument_group("the study")
    s.add_argument("--trials", type=number(int, "--trials", (0, 1_000_000)), default=0,
                   metavar="N",
                   help="the study ends when N trials are done (complete, pruned or failed); "
                        "the same command continues an interrupted study")
    s.add_argument("--timeout", type=number(float, "--timeout", (0.0, 10_000_000.0)),
                   default=0.0, metavar="MIN",
                   help="stop starting trials after MIN minutes (this process)")
    s.add_argument("--study", default=None, metavar="NAME",
                   help="study name (default: MODEL, or MODEL-preprocess with "
                        "--grid-preprocess)")
    s.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage shared by several workers: sqlite:///FILE, "
                        "postgresql://..., mysql://... or journal:FILE (default: "
                        "studies/NAME/study.db)")
    s.add_argument("--studies-dir", type=Path, default=STUDIES_DIR,
                   help="folder holding the study folders (trials, report)")
    s.add_argument("--metric", default="psnr", metavar="NAME",
                   help="objective on the validation split (default psnr; the metric's "
                        "direction is used)")
    s.add_argument("--pruner", default="median",
                   help="median (default), hyperband, none or threshold:VALUE")
    s.add_argument("--seed", type=number(int, "--seed", (0, 2**32 - 1)), default=None,
                   help="sampler seed (default: random)")
    w = parser.add_argument_group("what is searched")
    w.add_argument("--preset", default=None,
                   help="the model preset trials start from (default: as 'restorekit run')")
    w.add_argument("--space", type=Path, default=None, metavar="FILE",
                   help="TOML or JSON file narrowing or fixing the declared search space")
    w.add_argument("--grid-preprocess", default=None, metavar="SPECS",
                   help="preprocessing ablation: the preset once per pipeline, e.g. "
                        "\"none;autogamma;clahe;autogamma,denoise\"")
    d = parser.add_argument_group("data")
    d.add_argument("--data", type=Path, default=None,
                   help="paired data folder (default: the embedded low-light set)")
    d.add_argument("--skip-bad", action="store_true", help="skip unusable pairs")
    d.add_argument("--val-fraction", type=number(float, "--val-fraction", (0.0, 1.0, "()")),
                   default=0.2,
                   help="share of the training pairs held out for validation (default 0.2)")
    d.add_argument("--val-seed", type=number(int, "--val-seed", (0, 2**32 - 1)), default=0,
                   help="seed choosing the validation pairs (default 0)")
    t = parser.add_argument_group("length and limits of every trial")
    t.add_argument("--trial-epochs", type=number(int, "--trial-epochs", (1, 100_000)),
                   default=0, metavar="N",
                   help="train each trial N epochs with its whole schedule scaled to them "
                        "(learning-rate decay, evaluations, the pruner's warm-up: a quarter "
                        "of N); --export-best still writes the full-length schedule "
                        "(default: every trial trains the full schedule)")
    t.add_argument("--max-steps", type=number(int, "--max-steps", (0, None)), default=None,
                   metavar="N",
                   help="hard limit: stop each trial after N steps, cutting its schedule "
                        "where it is (a learning rate that decays later never does); "
                        "--trial-epochs shortens it instead")
    t.add_argument("--max-minutes", type=number(float, "--max-minutes", (0.0, None)), default=None,
                   metavar="MIN",
                   help="hard limit: stop each trial after MIN minutes, cutting its schedule "
                        "like --max-steps")
    t.add_argument("--device", default=None,
                   help="auto, cpu, cuda or cuda:N (not part of an exported configuration)")
    r = parser.add_argument_group("reading a study")
    r.add_argument("--report", default=None, metavar="STUDY",
                   help="rebuild STUDY's report.html and print its tables")
    r.add_argument("--export-best", default=None, metavar="STUDY",
                   help="write the best trial's configuration (for 'restorekit run MODEL "
                        "--train --config FILE') to -o FILE")
    r.add_argument("--keep-limits", action="store_true",
                   help="with --export-best: the best trial's own options (its --trial-epochs "
                        "length, --max-steps, --max-minutes and --device) instead of the "
                        "full-length schedule without limits")
    r.add_argument("-o", "--output", type=Path, default=None, metavar="FILE")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run or continue a study, or report on one, or export its best configuration."""
    from restorekit import tune

    if args.keep_limits and not args.export_best:
        raise UsageError("tune: --keep-limits goes with --export-best STUDY")
    if args.report or args.export_best:
        if args.model:
            raise UsageError("tune: --report/--export-best take a study, not a model")
        name = args.report or args.export_best
        study = tune.load_study(name, args.storage, args.studies_dir)
        if args.export_best:
            if args.output is None:
                raise UsageError("tune --export-best: give -o FILE")
            config = tune.export_best(study, args.output, keep_limits=args.keep_limits)
            length = f"{config['options'].get('epochs', '?')} epochs" + (
                " (the trial's own length and limits)" if args.keep_limits else "")
            print(f"best trial {config['tune']['trial']} ({config['tune']['metric']} "
                  f"{config['tune']['value']:.4f}) -> {args.output}: {length}; train it again "
                  f"with: {PROG} run {config['model']} --train --config {args.output}")
            return 0
        return _finish(study, registry, args, final=False)
    if not args.model:
        raise UsageError("tune: name a model, e.g. 'restorekit tune pix2pixhd --trials 20', "
                         "or use --report/--export-best STUDY")
    from restorekit.cli._common import lookup
    from restorekit.data import Holdout
    from restorekit.engine.allocator import keep_freed_memory

    model_cls = lookup(registry.model, args.model, "tune")
    grid = None
    if args.grid_preprocess is not None:
        grid = [p.strip() or "none" for p in args.grid_preprocess.split(";")]
        if len(set(grid)) != len(grid):
            raise UsageError("--grid-preprocess: a pipeline is listed twice")
    limits = {k: v for k, v in (("max_steps", args.max_steps), ("max_minutes", args.max_minutes),
                                ("device", args.device)) if v is not None}
    default_name = model_cls.name + ("-preprocess" if grid is not None else "")
    settings = tune.TuneSettings(
        model=model_cls.name, trials=args.trials, study=args.study or default_name,
        studies_dir=args.studies_dir, storage=args.storage, timeout_min=args.timeout,
        data=str(args.data) if args.data is not None else None, skip_bad=args.skip_bad,
        preset=args.preset, space_file=args.space, metric=args.metric, pruner=args.pruner,
        grid=grid, holdout=Holdout(args.val_fraction, args.val_seed), seed=args.seed,
        limits=limits, trial_epochs=args.trial_epochs)
    if args.trials < 0 or (args.trials == 0 and grid is None):
        raise UsageError("tune: --trials N (N > 0) is needed")
    keep_freed_memory()
    try:
        study = tune.run_study(settings, registry)
    except KeyboardInterrupt:
        print(f"{PROG}: tune: interrupted; the finished trials are stored. Run the same "
              f"command to continue study {settings.study!r}", file=sys.stderr)
        return 130
    return _finish(study, registry, args, final=True)


def _finish(study: Any, registry: Registry, args: argparse.Namespace, final: bool) -> int:
    from restorekit import tune
    from restorekit.tune.study import ATTR, study_folder

    attrs = study.user_attrs.get(ATTR, {})
    if final:
        if tune.is_finished(study, args.trials or 0):
            tune.final_evaluation(study, registry, device=args.device or "auto")
        else:
            print(f"{PROG}: tune: trials are still running in another worker (or "
                  f"--timeout ended this one early); the test split is evaluated when the "
                  f"study is done: run '{PROG} tune --report {study.study_name}' then",
                  file=sys.stderr)
    elif tune.is_finished(study, 0):
        tune.final_evaluation(study, registry)
    folder = study_folder(study, args.studies_dir)
    report = tune.write_study_report(study, folder)
    text = tune.tables(study, registry)
    if text:
        print(text)
    if attrs.get("mode") == "grid":
        print("(preprocessing ablation: the same configuration once per pipeline)")
    print(f"report: {report}")
    return 0


COMMAND = Command("tune", "hyperparameter and preprocessing studies with Optuna", configure,
                  run)
