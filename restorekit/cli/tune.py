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
DEFAULT_TOP = 3
"""How many of the best trials of a search ``--repeats`` trains again."""


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
                        "postgresql+psycopg2://USER@HOST/DB (the form plain Optuna and "
                        "optuna-dashboard open as written), mysql+pymysql://... or "
                        "journal:FILE (default: studies/NAME/study.db)")
    s.add_argument("--heartbeat", type=number(int, "--heartbeat", (1, 3600)),
                   default=None, metavar="SEC",
                   help="a running trial's heartbeat (database storages) every SEC seconds; "
                        "a trial silent for three is failed as 'worker died' (default 10)")
    s.add_argument("--studies-dir", type=Path, default=STUDIES_DIR,
                   help="folder holding the study folders (trials, report)")
    s.add_argument("--metric", default=None, metavar="NAME",
                   help="objective on the validation split (default psnr; the metric's "
                        "direction is used)")
    s.add_argument("--objectives", default=None, metavar="NAMES",
                   help="a multi-objective study instead of --metric: two or more metrics "
                        "(each with its direction) or step_time (the trial's mean training "
                        "step time, lower is better), e.g. psnr,ssim or psnr,step_time; the "
                        "report shows the Pareto front (no pruning)")
    s.add_argument("--sampler", default="tpe", metavar="NAME",
                   help="tpe (default) or nsga2[:POPULATION] (NSGA-II, for --objectives; its "
                        "first generation, 50 trials by default, is random)")
    s.add_argument("--pruner", default="median",
                   help="median (default), hyperband, none or threshold:VALUE")
    s.add_argument("--seed", type=number(int, "--seed", (0, 2**32 - 1)), default=None,
                   help="sampler seed (default: random); each trial's suggestions are "
                        "seeded by it and the trial's number, so workers never repeat "
                        "each other")
    s.add_argument("--keep-checkpoints", type=number(int, "--keep-checkpoints", (1, None)),
                   default=None, metavar="K",
                   help="delete the checkpoints of all trials but the best K complete ones "
                        "and the preset's (only in the study's trial folders on this "
                        "machine; default: keep all)")
    w = parser.add_argument_group("what is searched")
    w.add_argument("--preset", default=None,
                   help="the model preset trials start from (default: as 'restorekit run')")
    w.add_argument("--space", type=Path, default=None, metavar="FILE",
                   help="TOML or JSON file narrowing or fixing the declared search space")
    w.add_argument("--grid-preprocess", default=None, metavar="SPECS",
                   help="preprocessing ablation: the preset once per pipeline, e.g. "
                        "\"none;autogamma;clahe;autogamma,denoise\" (with --repeats K: "
                        "each pipeline with the same K seeds, the preset's hyperparameters)")
    k = parser.add_argument_group("repeats after the search")
    k.add_argument("--repeats", type=number(int, "--repeats", (0, 1000)), default=0,
                   metavar="K",
                   help="train the top trials and the preset (or every pipeline of "
                        "--grid-preprocess) again with the same K seeds each (derived from "
                        "--seed), and report paired 95 %% intervals and a verdict")
    k.add_argument("--repeat-top", type=number(int, "--repeat-top", (1, 1000)), default=None,
                   metavar="N",
                   help=f"with --repeats: how many of the best trials of a search are "
                        f"repeated (default {DEFAULT_TOP})")
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
    r.add_argument("--trial", type=number(int, "--trial", (0, None)), default=None,
                   metavar="N",
                   help="with --export-best: export trial N (needed with --objectives: a "
                        "trial of the Pareto front)")
    r.add_argument("--keep-limits", action="store_true",
                   help="with --export-best: the best trial's own options (its --trial-epochs "
                        "length, --max-steps, --max-minutes and --device) instead of the "
                        "full-length schedule without limits")
    r.add_argument("-o", "--output", type=Path, default=None, metavar="FILE")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Run or continue a study, or report on one, or export its best configuration."""
    from restorekit import tune
    from restorekit.tune.pareto import parse_objectives, parse_sampler
    from restorekit.tune.study import row_label
    from restorekit.tune.workers import HEARTBEAT_S

    args.heartbeat = args.heartbeat or HEARTBEAT_S
    if args.trial is not None and not args.export_best:
        raise UsageError("tune: --trial N goes with --export-best STUDY")
    if args.keep_limits and not args.export_best:
        raise UsageError("tune: --keep-limits goes with --export-best STUDY")
    if args.report or args.export_best:
        if args.model:
            raise UsageError("tune: --report/--export-best take a study, not a model")
        if args.repeats or args.repeat_top is not None:
            raise UsageError("--repeats: give it with the command that runs the study "
                             "(MODEL ...), not with --report/--export-best")
        name = args.report or args.export_best
        study = tune.load_study(name, args.storage, args.studies_dir, args.heartbeat)
        if args.export_best:
            if args.output is None:
                raise UsageError("tune --export-best: give -o FILE")
            config = tune.export_best(study, args.output, trial=args.trial,
                                      keep_limits=args.keep_limits)
            values = config["tune"].get("values") or {config["tune"]["metric"]:
                                                      config["tune"]["value"]}
            exported = study.trials[config["tune"]["trial"]]
            length = f"{config['options'].get('epochs', '?')} epochs" + (
                " (the trial's own length and limits)" if args.keep_limits else "")
            print(f"{row_label(study, exported)}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                  + f" -> {args.output}: {length}; train it again with: "
                  f"{PROG} run {config['model']} --train --config {args.output}")
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
    if grid is not None and args.sampler != "tpe":
        raise UsageError("--sampler: --grid-preprocess runs each pipeline once (a grid "
                         "sampler); leave --sampler out")
    if args.objectives is not None and args.metric is not None:
        raise UsageError("tune: --metric NAME is one objective, --objectives NAMES several; "
                         "give one of them")
    objectives = parse_objectives(args.objectives) if args.objectives is not None else None
    parse_sampler(args.sampler)  # a bad --sampler fails before the study is made
    default_name = model_cls.name + ("-preprocess" if grid is not None else "")
    settings = tune.TuneSettings(
        model=model_cls.name, trials=args.trials, study=args.study or default_name,
        studies_dir=args.studies_dir, storage=args.storage, timeout_min=args.timeout,
        data=str(args.data) if args.data is not None else None, skip_bad=args.skip_bad,
        preset=args.preset, space_file=args.space, metric=args.metric or "psnr",
        objectives=objectives, sampler=args.sampler, pruner=args.pruner,
        grid=grid, holdout=Holdout(args.val_fraction, args.val_seed), seed=args.seed,
        limits=limits, heartbeat=args.heartbeat, keep_checkpoints=args.keep_checkpoints,
        trial_epochs=args.trial_epochs)
    if args.trials < 0 or (args.trials == 0 and grid is None):
        raise UsageError("tune: --trials N (N > 0) is needed")
    if args.repeat_top is not None and (grid is not None or not args.repeats):
        raise UsageError("--repeat-top: only with --repeats K in a search (a "
                         "--grid-preprocess ablation repeats every pipeline)")
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
    from restorekit.tune import repeats
    from restorekit.tune.study import ATTR, study_folder

    attrs = study.user_attrs.get(ATTR, {})
    folder = study_folder(study, args.studies_dir)
    device = args.device or "auto"
    if final:
        if tune.is_finished(study, args.trials or 0):
            if args.repeats:  # validation only; the test split after all of them
                try:
                    repeats.run_repeats(study, registry, folder, args.repeats,
                                        args.repeat_top or DEFAULT_TOP, args.seed,
                                        skip_bad=args.skip_bad, device=device)
                except KeyboardInterrupt:
                    print(f"{PROG}: tune: interrupted; the finished repeats are stored. Run "
                          f"the same command to continue study {study.study_name!r}",
                          file=sys.stderr)
                    return 130
            tune.final_evaluation(study, registry, device=device)
            repeats.evaluate_tests(study, registry, device=device)
            repeats.classic_evaluation(study, registry)
        else:
            print(f"{PROG}: tune: trials are still running in another worker (or "
                  f"--timeout ended this one early); the test split is evaluated when the "
                  f"study is done: run '{PROG} tune --report {study.study_name}' then"
                  + (" (for --repeats: this command again)" if args.repeats else ""),
                  file=sys.stderr)
    elif tune.is_finished(study, 0):
        tune.final_evaluation(study, registry)
        repeats.evaluate_tests(study, registry)
        repeats.classic_evaluation(study, registry)
    report = tune.write_study_report(study, folder)
    text = tune.tables(study, registry)
    if text:
        print(text)
    if attrs.get("mode") == "grid":
        print("(preprocessing ablation: the preset's hyperparameters for every pipeline, "
              "once each; with --repeats K also with the same K seeds each)")
    more = repeats.summary_text(study, registry)
    if more:
        print("\n" + more)
    print(f"report: {report}")
    return 0


COMMAND = Command("tune", "hyperparameter and preprocessing studies with Optuna", configure,
                  run)
