"""Optuna studies whose trials are ordinary training runs of the engine.

Each trial trains the model into ``STUDY/trials/NNNN`` (a run folder with its report) on
the training pairs without the validation split, evaluates on the validation split
(``open_pairs(data, "val")``) and reports every evaluation to Optuna for pruning. The
objective is the final validation score. The test split is opened only by
:func:`final_evaluation`, once the search is over, for the trials worth reporting (the
best one and the preset's, or every pipeline of a preprocessing grid).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from restorekit.api import AnyMetric, TrainableModel
from restorekit.data import Holdout, PairSet, open_pairs
from restorekit.engine import TrainJob, TrainResult, load_trained, write_report
from restorekit.engine.rundir import RunDir
from restorekit.errors import PluginError, RestorekitError, UsageError, one_line
from restorekit.plugins import Registry
from restorekit.tune import schedule, workers
from restorekit.tune.pareto import (
    MAX_REPORTED,
    Objective,
    StepTimer,
    best_trials,
    front_table,
    is_multi,
    make_sampler,
    objective_names,
    objective_values,
    resolve_objectives,
)
from restorekit.tune.pruning import PruningCallback
from restorekit.tune.space import (
    Space,
    build_space,
    preset_values,
    sample_model,
    sample_pipeline,
)
from restorekit.tune.workers import BACKSTOP, HEARTBEAT_S, counted

STUDY_DB = "study.db"
TRIALS = "trials"
CACHE = "cache"
"""Preprocessed training images of folder data, by pipeline (see restorekit.data.cache)."""
ATTR = "restorekit"
"""Study user attribute holding the study's settings (model, preset, metric, data, ...)."""
TEST_ATTR = "test"
"""Study user attribute holding the final test scores, by trial number."""


class TuneError(RestorekitError):
    """A study cannot be opened, run or reported."""


@dataclass
class TuneSettings:
    """Everything ``restorekit tune MODEL`` was asked for."""

    model: str
    trials: int = 0
    study: str = ""
    studies_dir: Path = Path("studies")
    storage: str | None = None
    timeout_min: float = 0.0
    data: str | None = None
    skip_bad: bool = False
    preset: str | None = None
    space_file: Path | None = None
    metric: str = "psnr"
    objectives: list[str] | None = None
    """Two or more objectives (``--objectives``) instead of ``metric``: a multi-objective
    study; ``metric`` becomes the first metric among them (checkpoint choice, report)."""
    sampler: str = "tpe"
    pruner: str = "median"
    grid: list[str] | None = None
    holdout: Holdout = field(default_factory=Holdout)
    seed: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    """Per-trial ``max_steps``, ``max_minutes``, ``device`` (only those given)."""
    heartbeat: int = HEARTBEAT_S
    """Seconds between a running trial's heartbeats (RDB storages)."""
    keep_checkpoints: int | None = None
    """Keep the checkpoints of the best K complete trials only (None: keep all)."""
    trial_epochs: int = 0
    """Train each trial this many epochs, its whole schedule scaled to them (0: the full
    schedule); see :mod:`restorekit.tune.schedule`."""

    @property
    def folder(self) -> Path:
        return self.studies_dir / self.study


# -- storage and studies ----------------------------------------------------------------------
def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("restorekit tune needs optuna: pip install 'restorekit[tune]'") \
            from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(storage: str | None, folder: Path) -> str:
    """``storage`` in the form plain Optuna and optuna-dashboard open as written (see
    :func:`_with_driver`), or the SQLite file in the study folder."""
    if storage:
        return _with_driver(storage)
    return f"sqlite:///{(folder / STUDY_DB).resolve()}"


def shown_url(url: str) -> str:
    """``url`` with any password hidden, for messages and the study's attributes."""
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(storage: str | None, folder: Path, create: bool = True,
                 heartbeat: int = HEARTBEAT_S) -> Any:
    """An Optuna storage: an RDB URL (SQLite, PostgreSQL, MySQL, with a heartbeat every
    ``heartbeat`` seconds, so a killed worker's trial is failed after three) or
    ``journal:FILE`` (a journal file: no heartbeats; a dead worker on the same machine is
    still found by its process id)."""
    optuna = _optuna()
    if storage and storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage[len("journal:"):])
        if not create and not path.is_file():
            raise UsageError(f"--storage: {path}: no such journal file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if not storage:
        if not create and not (folder / STUDY_DB).is_file():
            raise UsageError(f"no study in {folder} (no {STUDY_DB}; give --storage URL or "
                             f"--studies-dir)")
        folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, folder)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):  # two workers creating the tables at once: one retries
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                grace_period=BACKSTOP * heartbeat, heartbeat_stale_trial_callback=_requeue_preset)
        except ImportError as exc:
            raise UsageError(f"--storage {shown_url(url)}: a database driver is missing "
                             f"({one_line(exc)})") from None
        except Exception as exc:  # sqlalchemy errors: bad URL, server down, races
            last = exc
            time.sleep(0.5 + attempt)
    raise TuneError(f"--storage {shown_url(url)}: cannot open the study storage "
                    f"({one_line(last)})")


def _with_driver(url: str) -> str:
    """``postgresql://`` names the driver SQLAlchemy assumes (psycopg 3 in SQLAlchemy 2.1,
    psycopg2 in 2.0); where only psycopg2 is installed, the URL that works as written, in
    restorekit, plain Optuna and optuna-dashboard alike, is ``postgresql+psycopg2://``: that
    form is used, said once, and stored with the study."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and \
            importlib.util.find_spec("psycopg2") is not None:
        fixed = "postgresql+psycopg2://" + url[len("postgresql://"):]
        from restorekit.errors import warn

        warn(f"--storage: psycopg (3) is not installed, so postgresql:// does not open as "
             f"written; using {shown_url(fixed)} (give this form to optuna and "
             f"optuna-dashboard)", once=True)
        return fixed
    return url


def _requeue_preset(study: Any, trial: Any) -> None:
    """Optuna's own heartbeat check failed a dead worker's trial (a backstop: restorekit's
    :func:`~restorekit.tune.workers.fail_dead` normally comes first): queue a preset again."""
    if trial.user_attrs.get("baseline"):
        study.enqueue_trial({}, user_attrs={"baseline": True})


def load_study(name: str, storage: str | None, studies_dir: Path,
               heartbeat: int = HEARTBEAT_S) -> Any:
    """An existing study by name (its folder under ``studies_dir``, or ``name`` a folder)."""
    optuna = _optuna()
    folder = studies_dir / name
    if not storage and Path(name).is_dir() and (Path(name) / STUDY_DB).is_file():
        folder, name = Path(name), Path(name).name
    store = open_storage(storage, folder, create=False, heartbeat=heartbeat)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        raise UsageError(f"no study {name!r} in {storage_url(storage, folder)}") from None
    return study


def study_folder(study: Any, studies_dir: Path) -> Path:
    """Where the study's trials and report live on this machine."""
    stored = study.user_attrs.get(ATTR, {}).get("folder")
    if stored and Path(stored).is_dir():
        return Path(stored)
    return studies_dir / study.study_name


def _pruner(spec: str, higher: bool, warmup_epochs: int = 1) -> Any:
    """The pruner ``--pruner`` names. The median pruner waits for 3 finished trials and, within
    a trial, for ``warmup_epochs`` (a GAN's first evaluations say little about its last)."""
    optuna = _optuna()
    name, _, arg = spec.partition(":")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "threshold":
        try:
            value = float(arg)
        except ValueError:
            raise UsageError(f"--pruner threshold:VALUE needs a number (got {arg!r})") from None
        return optuna.pruners.ThresholdPruner(lower=value) if higher else \
            optuna.pruners.ThresholdPruner(upper=value)
    raise UsageError(f"--pruner: expected median, hyperband, none or threshold:VALUE "
                     f"(got {spec!r})")


# -- the trials -----------------------------------------------------------------------------
@dataclass
class _Context:
    settings: TuneSettings
    registry: Registry
    model_cls: type[TrainableModel]
    space: Space
    metrics: list[AnyMetric]
    metric: AnyMetric
    folder: Path
    train_pairs: PairSet
    val_pairs: PairSet
    bar: Any = None
    objectives: list[Objective] = field(default_factory=list)
    """The objectives of a multi-objective study (empty for one objective)."""


def _trial_config(ctx: _Context, options: dict[str, Any], preprocess: str) -> dict[str, Any]:
    """The trial's configuration in a run's ``config.json`` format (``--export-best``)."""
    s = ctx.settings
    return {"model": ctx.model_cls.name, "options": options, "preprocess": preprocess,
            "data": ctx.train_pairs.describe(),
            "extra": {"data_path": s.data, "holdout": s.holdout.to_dict()}}


def _print(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _objective(ctx: _Context) -> Callable[[Any], float | tuple[float, ...]]:
    optuna = _optuna()

    def objective(trial: Any) -> float | tuple[float, ...]:
        s = ctx.settings
        run = RunDir(ctx.folder / TRIALS / f"{trial.number:04d}")
        trial.set_user_attr("run", str(run.path.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            if s.grid is not None:
                spec = trial.suggest_categorical("preprocess", s.grid)
                params: dict[str, Any] = {}
                pipeline = "" if spec == "none" else spec
            elif trial.user_attrs.get("baseline"):
                params, pipeline = {}, ctx.space.pipeline if ctx.space.pipeline is not None \
                    else ctx.model_cls.default_preprocess
            else:
                params = sample_model(trial, ctx.space)
                pipeline = sample_pipeline(trial, ctx.space)
            from restorekit.pipeline import Pipeline

            # Validation images are preprocessed once per trial, not at every evaluation.
            preprocess = Pipeline.parse(pipeline, ctx.registry).remember()
            base = preset_values(ctx.model_cls, s.preset, ctx.space.fixed)
            values = ctx.model_cls.options_from_search(base, params)
            # The trial's best checkpoint is chosen on validation by the study's objective.
            full, options = schedule.trial_options(
                ctx.model_cls, {**values, "select_metric": ctx.metric.name}, s.trial_epochs,
                s.limits)
            model = ctx.model_cls(options, preprocess)
        except (RestorekitError, ValueError, TypeError) as exc:
            return _failed(trial, f"bad configuration: {one_line(exc)}")
        from restorekit.engine.state import capture_options

        trial.set_user_attr("preprocess", str(preprocess))
        # --export-best: the full-length configuration; --keep-limits: the trial's own.
        trial.set_user_attr("config", _trial_config(ctx, schedule.exported(full),
                                                    str(preprocess)))
        trial.set_user_attr("trial_options", capture_options(model))
        shown = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items()
                          if not k.startswith("preprocess"))
        _print(f"tune: trial {trial.number}"
               + (" (the preset)" if trial.user_attrs.get("baseline") else "")
               + f": {shown or 'preset values'}; preprocess {str(preprocess) or 'none'!r}")

        started, timer = time.monotonic(), StepTimer()
        # Optuna prunes single-objective studies only.
        pruning = [] if ctx.objectives else [PruningCallback(trial, ctx.metric.name)]
        # Validation only: no test_pairs, the test split is final_evaluation's alone.
        job = TrainJob(ctx.registry, data=s.data, holdout=s.holdout,
                       train_pairs=ctx.train_pairs, eval_pairs=ctx.val_pairs,
                       metrics=ctx.metrics, callbacks=[*pruning, timer],
                       extra={"study": s.study, "trial": trial.number})
        try:
            result: TrainResult = job.train(model, run, overwrite=True)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("pruned", str(exc))
            _rebuild_report(run, ctx.metrics)
            _print(f"tune: trial {trial.number} {exc}")
            raise
        except (RestorekitError, ValueError, RuntimeError) as exc:  # NaN loss, OOM, ...
            _rebuild_report(run, ctx.metrics)
            return _failed(trial, one_line(exc))
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        trial.set_user_attr("steps", result.step)
        trial.set_user_attr("step_time", timer.step_time)
        if result.stopped == "interrupted":
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        value = result.metrics.get(ctx.metric.name)
        trial.set_user_attr("val", result.validation or result.metrics)
        if value is None or not math.isfinite(value):
            return _failed(trial, f"no finite validation {ctx.metric.name} ({value})")
        if ctx.objectives:
            values = objective_values(ctx.objectives, result.metrics, timer.step_time)
            shown = ", ".join(f"{o.name} {v:.4f}" for o, v in zip(ctx.objectives, values,
                                                                  strict=True))
            if not all(math.isfinite(v) for v in values):
                return _failed(trial, f"an objective is not finite ({shown})")
            _print(f"tune: trial {trial.number}: validation {shown} ({result.stopped}, "
                   f"{result.step} steps)")
            return values
        _print(f"tune: trial {trial.number}: validation {ctx.metric.name} {value:.4f} "
               f"({result.stopped}, {result.step} steps)")
        return float(value)

    return objective


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _failed(trial: Any, reason: str) -> float:
    """Record a failed trial with its one-line reason; NaN makes Optuna mark it FAIL."""
    trial.set_user_attr("fail_reason", reason)
    _print(f"tune: trial {trial.number} failed: {reason}")
    return float("nan")


def _rebuild_report(run: RunDir, metrics: Sequence[AnyMetric]) -> None:
    # A report of a half-made run is a nicety, never a reason to stop the study.
    with contextlib.suppress(Exception):
        write_report(run, {m.name: m.higher_is_better for m in metrics})


# -- running a study --------------------------------------------------------------------------
def _settings_attr(settings: TuneSettings, metric: AnyMetric, space: Space) -> dict[str, Any]:
    return {"model": settings.model, "preset": settings.preset, "metric": metric.name,
            "objectives": settings.objectives,
            "higher_is_better": metric.higher_is_better, "data": settings.data,
            "holdout": settings.holdout.to_dict(),
            "mode": "grid" if settings.grid is not None else "search",
            "grid": settings.grid, "space": space.describe(), "limits": settings.limits,
            "trial_epochs": settings.trial_epochs or None,
            "folder": str(settings.folder.resolve()),
            "storage": shown_url(storage_url(settings.storage, settings.folder))}


def open_study(settings: TuneSettings, metric: AnyMetric, space: Space,
               warmup_epochs: int = 1, objectives: Sequence[Objective] = ()) -> Any:
    """Create the study (one direction per objective: ``metric``'s, or each of
    ``objectives``'), or load it and check it is the same kind of study."""
    optuna = _optuna()
    storage = open_storage(settings.storage, settings.folder, heartbeat=settings.heartbeat)
    direction = "maximize" if metric.higher_is_better else "minimize"
    higher = metric.higher_is_better
    directions = [o.direction for o in objectives] or [direction]
    names = [o.name for o in objectives] or [metric.name]
    sampler: Any
    if settings.grid is not None:
        sampler = optuna.samplers.GridSampler({"preprocess": settings.grid}, seed=0)
        pruner = optuna.pruners.NopPruner()
    else:
        sampler = make_sampler(settings.sampler, settings.seed)
        pruner = _pruner(settings.pruner, higher, warmup_epochs) if not objectives else \
            optuna.pruners.NopPruner()
    try:  # one worker creates the study (atomically) and queues the preset
        study = optuna.create_study(study_name=settings.study, storage=storage,
                                    sampler=sampler, pruner=pruner, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler,
                                  pruner=pruner)
        created = False
    stored = study.user_attrs.get(ATTR)
    mine = _settings_attr(settings, metric, space)
    if study.metric_names is None:  # optuna-dashboard shows "psnr", not "Objective 0"
        study.set_metric_names(names)
    if stored is None:
        study.set_user_attr(ATTR, mine)
    if created and settings.grid is None:
        study.enqueue_trial({}, user_attrs={"baseline": True})
    if stored is None:
        return study
    for key in ("model", "metric", "objectives", "mode", "data", "holdout", "grid",
                "trial_epochs"):
        if stored.get(key) != mine.get(key):
            raise UsageError(f"--study {settings.study}: this study was made with {key} "
                             f"{stored.get(key)!r}, not {mine.get(key)!r}; use another "
                             f"--study name")
    return study


def _metric(registry: Registry, name: str) -> AnyMetric:
    try:
        metric = registry.metric(name)
    except (PluginError, RestorekitError) as exc:
        raise UsageError(f"--metric: {exc}") from None
    if metric.higher_is_better is None:
        raise UsageError(f"--metric: {name!r} is a statistic with no better direction; the "
                         f"objective needs a metric where higher or lower is better")
    return metric


def run_study(settings: TuneSettings, registry: Registry) -> Any:
    """Run (or continue) the study until ``settings.trials`` trials count, then evaluate the
    reported trials on the test split once and write the report. Returns the study."""
    _optuna()
    from restorekit import evaluate

    model_cls = registry.model(settings.model)
    if not (isinstance(model_cls, type) and issubclass(model_cls, TrainableModel)):
        raise UsageError(f"tune: model {settings.model!r} does not train")
    if settings.preset is None:
        settings.preset = model_cls.embedded_preset if settings.data is None else \
            model_cls.default_preset
    if settings.preset is not None and settings.preset not in model_cls.presets:
        raise UsageError(f"--preset: model {settings.model!r} has no preset "
                         f"{settings.preset!r} (known: {', '.join(sorted(model_cls.presets))})")
    objectives = resolve_objectives(registry, settings.objectives) \
        if settings.objectives else []
    if objectives:  # the first metric among them chooses each trial's best checkpoint
        settings.metric = next(o.name for o in objectives if o.metric is not None)
    metric = _metric(registry, settings.metric)
    metrics = evaluate.default_metrics(registry)
    for m in [metric, *(o.metric for o in objectives if o.metric is not None)]:
        if m.name not in [known.name for known in metrics]:
            metrics.insert(0, m)
    space = build_space(model_cls, settings.preset, registry, settings.space_file)
    if settings.grid is not None:
        for spec in settings.grid:  # every pipeline must parse before the first trial
            from restorekit.pipeline import Pipeline

            Pipeline.parse("" if spec == "none" else spec, registry)
        settings.trials = settings.trials or len(settings.grid)
    if settings.trials <= 0:
        raise UsageError("--trials: give the number of trials (> 0)")
    # Prune a trial only after a quarter of its epochs (a fixed derived value such as
    # Pix2PixHD's decay_fraction becomes options first).
    base = model_cls.make_options(None, **model_cls.options_from_search(
        preset_values(model_cls, settings.preset, space.fixed), {}))
    warmup = schedule.warmup_epochs(int(getattr(base, "epochs", 4)), settings.trial_epochs)
    study = open_study(settings, metric, space, warmup_epochs=warmup, objectives=objectives)
    # A deterministic pipeline runs once per training image of folder data (in memory); where
    # trials share pipelines (a grid, a fixed pipeline) also once per study (STUDY/cache). A
    # search's pipelines have searched parameters, hardly ever the same twice: caching them
    # on disk would cost a data set's size per trial for nothing.
    shared = settings.grid is not None or space.pipeline is not None
    train_pairs = open_pairs(settings.data, "train", skip_bad=settings.skip_bad,
                             holdout=settings.holdout,
                             cache_dir=settings.folder / CACHE if shared else None)
    val_pairs = open_pairs(settings.data, "val", skip_bad=settings.skip_bad,
                           holdout=settings.holdout)
    ctx = _Context(settings, registry, model_cls, space, metrics, metric, settings.folder,
                   train_pairs, val_pairs, objectives=objectives)
    workers.fail_dead(study, _print)
    _requeue(study, settings)
    done = counted(study)
    _print(f"tune: study {settings.study!r} "
           f"({shown_url(storage_url(settings.storage, settings.folder))}):"
           f" {done} of {settings.trials} trials done; {model_cls.name} preset "
           f"{settings.preset}, objective validation {metric.name} "
           f"({'higher' if metric.higher_is_better else 'lower'} is better) on "
           f"{val_pairs.describe()}")
    if objectives:
        _print("tune: objectives " + ", ".join(f"{o.name} {'↑' if o.higher_is_better else '↓'}"
                                               for o in objectives)
               + ": the report shows their Pareto front; pruning is off (Optuna does not "
                 "prune multi-objective studies)")
    if settings.data is None and _may_preprocess(settings, space):
        _print("tune: the embedded set synthesizes a new low image for every training crop, "
               "so a preprocessing pipeline runs once per crop and cannot be cached (see "
               "'Preprocessing in a study' in docs/benchmarks.md for what it costs); on "
               "folder data (--data) it runs once per image")
    if settings.trial_epochs:
        _print(f"tune: each trial trains {settings.trial_epochs} epochs, its schedule of "
               f"{getattr(base, 'epochs', '?')} epochs scaled to them"
               + (f"; the median pruner waits {warmup} epoch(s)"
                  if settings.grid is None and settings.pruner == "median" else ""))
    bar = tqdm(total=settings.trials, initial=min(done, settings.trials),
               desc=f"study {settings.study}", unit="trial", dynamic_ncols=True)

    def after_trial(study: Any, trial: Any) -> None:
        bar.n = min(counted(study), settings.trials)
        bar.refresh()
        _keep_checkpoints(study, settings)
        if workers.taken(study) >= settings.trials:
            study.stop()

    objective = workers.guarded(_objective(ctx), settings.trials, _print)
    deadline = time.monotonic() + settings.timeout_min * 60 if settings.timeout_min else None
    try:
        # Until the study has its trials and no preset waits: a dead worker's preset is
        # queued again, and a trial whose worker died leaves room for another.
        while True:
            if workers.taken(study) < settings.trials or _preset_waits(study):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                study.optimize(objective, timeout=left, callbacks=[after_trial])
            workers.settle(study, _print)
            _requeue(study, settings)
            if not _preset_waits(study) and workers.taken(study) >= settings.trials:
                break
    finally:
        bar.close()
    _keep_checkpoints(study, settings)
    return study


def _preset_waits(study: Any) -> bool:
    """A preset's trial is queued (it runs even when the study has its trials)."""
    from optuna.trial import TrialState

    return any(t.user_attrs.get("baseline")
               for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _keep_checkpoints(study: Any, settings: TuneSettings) -> None:
    """``--keep-checkpoints K``: delete the checkpoints of the trials outside the best K (the
    presets' and the reported trials' stay)."""
    if settings.keep_checkpoints is None:
        return
    needed = [t.number for t in reported_trials(study)]
    removed = workers.keep_best_checkpoints(study, settings.keep_checkpoints,
                                            settings.folder / TRIALS, needed)
    if removed:
        _print(f"tune: removed the checkpoints of trial(s) "
               f"{', '.join(str(n) for n in removed)} (--keep-checkpoints "
               f"{settings.keep_checkpoints})")


def _may_preprocess(settings: TuneSettings, space: Space) -> bool:
    """Whether a trial of the study may have a preprocessing pipeline."""
    if settings.grid is not None:
        return any(spec != "none" for spec in settings.grid)
    if space.pipeline is not None:
        return bool(space.pipeline)
    return space.max_steps > 0 and bool(space.candidates)


def _requeue(study: Any, settings: TuneSettings) -> None:
    """A search whose preset was interrupted runs it again (a dead worker's preset is queued
    by :func:`~restorekit.tune.workers.fail_dead`, a new study's by :func:`open_study`); a
    grid re-runs interrupted pipelines."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if settings.grid is None:
        presets = [t for t in trials if t.user_attrs.get("baseline")
                   and (t.state != TrialState.FAIL
                        or ("fail_reason" in t.user_attrs and not workers.replaced(t)))]
        if trials and not presets:
            study.enqueue_trial({}, user_attrs={"baseline": True})
        return
    ok = {t.params.get("preprocess") for t in trials if t.state != TrialState.FAIL
          or ("fail_reason" in t.user_attrs and not workers.replaced(t))}
    waiting = {t.params.get("preprocess") for t in trials if t.state == TrialState.WAITING}
    for t in trials:
        spec = t.params.get("preprocess")
        if t.state == TrialState.FAIL and spec not in ok | waiting and spec in settings.grid:
            study.enqueue_trial({"preprocess": spec})
            waiting.add(spec)


# -- the end of a study -----------------------------------------------------------------------
def reported_trials(study: Any) -> list[Any]:
    """The trials the test split is evaluated for: every completed pipeline of a grid; else
    the best trial (the first :data:`MAX_REPORTED` of a Pareto front by the first objective)
    and the preset's."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    if study.user_attrs.get(ATTR, {}).get("mode") == "grid":
        return sorted(done, key=lambda t: t.number)
    best = best_trials(study)[:MAX_REPORTED]
    chosen = best + [t for t in done if t.user_attrs.get("baseline") and
                     t.number not in {b.number for b in best}]
    return chosen


def is_finished(study: Any, trials: int) -> bool:
    """Enough trials count and none is running or waiting (another worker may still improve
    the study); the trials of dead workers are failed first (they are not running)."""
    from optuna.trial import TrialState

    workers.fail_dead(study, _print)
    running = [t for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return counted(study) >= trials and not running


def final_evaluation(study: Any, registry: Registry, device: str = "auto") -> dict[str, Any]:
    """Evaluate the reported trials on the test split, once each, with each trial's
    selected checkpoint (``best``, chosen on validation; ``last`` where there is none);
    stored with the study (user attribute ``test``, by trial number: the evaluation's
    record and ``"checkpoint"``) and returned."""
    from restorekit import evaluate

    attrs = study.user_attrs.get(ATTR, {})
    scores: dict[str, Any] = dict(study.user_attrs.get(TEST_ATTR, {}))
    todo = [t for t in reported_trials(study) if str(t.number) not in scores]
    if not todo:
        return scores
    test = open_pairs(attrs.get("data"), "test")  # the only place a study opens it
    metrics = evaluate.default_metrics(registry)
    _print(f"tune: final evaluation on the test split ({test.describe()}) of trial(s) "
           f"{', '.join(str(t.number) for t in todo)}")
    for t in todo:
        run = Path(t.user_attrs.get("run", ""))
        if not RunDir(run).has_checkpoint():
            where = "has no checkpoint" if run.is_dir() else \
                f"is not on this machine ({workers.host()})"
            _print(f"tune: trial {t.number}: its run folder {run} (host "
                   f"{t.user_attrs.get('host', '?')}) {where}; run 'restorekit tune --report "
                   f"{study.study_name}' on host {t.user_attrs.get('host', '?')} to evaluate "
                   f"it on the test split")
            continue
        best = RunDir(run).checkpoint_path(RunDir.BEST)
        model = load_trained(best if best.is_file() else run, registry, device=device)
        scores[str(t.number)] = {**evaluate.evaluate(test, model.enhance, metrics,
                                                     desc=f"test, trial {t.number}").record(),
                                 "checkpoint": "best" if best.is_file() else "last"}
    study.set_user_attr(TEST_ATTR, scores)
    return scores


def tables(study: Any, registry: Registry) -> str:
    """The validation and test tables of the reported trials (plain text)."""
    from restorekit import evaluate

    metrics = evaluate.default_metrics(registry)
    test = study.user_attrs.get(TEST_ATTR, {})
    rows_val: dict[str, dict[str, float]] = {}
    rows_test: dict[str, dict[str, float]] = {}
    for t in reported_trials(study):
        label = row_label(study, t)
        val = t.user_attrs.get("val", {})
        if all(m.name in val for m in metrics):
            rows_val[label] = val
        if str(t.number) in test and all(m.name in test[str(t.number)] for m in metrics):
            rows_test[label] = test[str(t.number)]
    out = []
    if is_multi(study) and best_trials(study):
        out += [front_table(study, lambda t: row_label(study, t)), ""]
    if rows_val:
        out += ["validation split:", evaluate.format_table(rows_val, metrics)]
    if rows_test:
        out += ["", "test split (evaluated once, after the search):",
                evaluate.format_table(rows_test, metrics)]
    return "\n".join(out)


def row_label(study: Any, trial: Any) -> str:
    """``trial 3 (best)``, ``trial 0 (preset quick)`` or the pipeline of a grid row."""
    attrs = study.user_attrs.get(ATTR, {})
    if attrs.get("mode") == "grid":
        return f"{trial.params.get('preprocess', '?')} (trial {trial.number})"
    tags = []
    if trial.number in {t.number for t in best_trials(study)}:
        tags.append("Pareto front" if is_multi(study) else "best")
    if trial.user_attrs.get("baseline"):
        tags.append(f"preset {attrs.get('preset')}")
    return f"trial {trial.number} ({', '.join(tags)})" if tags else f"trial {trial.number}"


def export_best(study: Any, output: Path, trial: int | None = None,
                keep_limits: bool = False) -> dict[str, Any]:
    """Write the best trial's configuration (a run's ``config.json`` format) to ``output``:
    the best trial, or completed trial number ``trial`` (needed for a multi-objective study:
    a trial of its Pareto front); its full-length schedule without per-trial limits and
    device, or with ``keep_limits`` the options the trial trained with (its length, limits
    and device)."""
    from optuna.trial import TrialState

    front = best_trials(study)
    if not front:
        raise UsageError(f"--export-best: study {study.study_name!r} has no completed trial")
    numbers = f"{'the Pareto front' if is_multi(study) else 'the best'}: " \
        + ", ".join(str(t.number) for t in front)
    if trial is None and is_multi(study):
        raise UsageError(f"--export-best: study {study.study_name!r} has several objectives; "
                         f"choose a trial with --trial N ({numbers})")
    best = front[0]
    if trial is not None:
        chosen = [t for t in study.get_trials(deepcopy=False)
                  if t.number == trial and t.state == TrialState.COMPLETE]
        if not chosen:
            raise UsageError(f"--trial {trial}: study {study.study_name!r} has no completed "
                             f"trial {trial} ({numbers})")
        best = chosen[0]
    config = dict(best.user_attrs.get("config") or {})
    if not config:
        raise TuneError(f"--export-best: trial {best.number} has no stored configuration")
    if keep_limits:
        config["options"] = best.user_attrs.get("trial_options", config["options"])
    config["tune"] = {"study": study.study_name, "trial": best.number,
                      "value": None if is_multi(study) else best.value,
                      "metric": study.user_attrs.get(ATTR, {}).get("metric"),
                      "params": best.params, "keep_limits": keep_limits,
                      "trial_epochs": study.user_attrs.get(ATTR, {}).get("trial_epochs")}
    if is_multi(study):  # every objective's value, by name
        config["tune"]["values"] = dict(zip(objective_names(study), best.values, strict=True))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return config

