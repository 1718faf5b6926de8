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
from restorekit.tune.pruning import PruningCallback
from restorekit.tune.space import (
    Space,
    build_space,
    preset_values,
    sample_model,
    sample_pipeline,
)

STUDY_DB = "study.db"
TRIALS = "trials"
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
    pruner: str = "median"
    grid: list[str] | None = None
    holdout: Holdout = field(default_factory=Holdout)
    seed: int | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    """Per-trial ``max_steps``, ``max_minutes``, ``device`` (only those given)."""

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
    """``storage``, or the SQLite file in the study folder."""
    if storage:
        return storage
    return f"sqlite:///{(folder / STUDY_DB).resolve()}"


def open_storage(storage: str | None, folder: Path, create: bool = True) -> Any:
    """An Optuna storage: an RDB URL (SQLite, PostgreSQL, MySQL, with heartbeats, so a
    killed worker's trial is failed later) or ``journal:FILE`` (a journal file)."""
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
    url = _with_driver(storage_url(storage, folder))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):  # two workers creating the tables at once: one retries
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60,
                                              grace_period=180)
        except ImportError as exc:
            raise UsageError(f"--storage {url}: a database driver is missing "
                             f"({one_line(exc)})") from None
        except Exception as exc:  # sqlalchemy errors: bad URL, server down, races
            last = exc
            time.sleep(0.5 + attempt)
    raise TuneError(f"--storage {url}: cannot open the study storage ({one_line(last)})")


def _with_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed (SQLAlchemy 2.1 assumes psycopg 3,
    2.0 psycopg2)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and \
            importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def load_study(name: str, storage: str | None, studies_dir: Path) -> Any:
    """An existing study by name (its folder under ``studies_dir``, or ``name`` a folder)."""
    optuna = _optuna()
    folder = studies_dir / name
    if not storage and Path(name).is_dir() and (Path(name) / STUDY_DB).is_file():
        folder, name = Path(name), Path(name).name
    store = open_storage(storage, folder, create=False)
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


def counted(study: Any) -> int:
    """Trials that count towards ``--trials``: complete, pruned, or failed with a reason
    (interrupted and killed trials do not count; the next run replaces them)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs))


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


def _trial_config(ctx: _Context, options: dict[str, Any], preprocess: str) -> dict[str, Any]:
    """The trial's configuration in a run's ``config.json`` format (``--export-best``)."""
    s = ctx.settings
    return {"model": ctx.model_cls.name, "options": options, "preprocess": preprocess,
            "data": ctx.train_pairs.describe(),
            "extra": {"data_path": s.data, "holdout": s.holdout.to_dict()}}


def _print(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _objective(ctx: _Context) -> Callable[[Any], float]:
    optuna = _optuna()

    def objective(trial: Any) -> float:
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

            preprocess = Pipeline.parse(pipeline, ctx.registry)
            base = preset_values(ctx.model_cls, s.preset, ctx.space.fixed)
            values = ctx.model_cls.options_from_search(base, params)
            # The trial's best checkpoint is chosen on validation by the study's objective.
            options = ctx.model_cls.make_options(None, **{**values, **s.limits,
                                                          "select_metric": ctx.metric.name})
            model = ctx.model_cls(options, preprocess)
        except (RestorekitError, ValueError, TypeError) as exc:
            return _failed(trial, f"bad configuration: {one_line(exc)}")
        from restorekit.engine.state import capture_options

        trial.set_user_attr("preprocess", str(preprocess))
        trial.set_user_attr("config", _trial_config(ctx, capture_options(model), str(preprocess)))
        shown = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items()
                          if not k.startswith("preprocess"))
        _print(f"tune: trial {trial.number}"
               + (" (the preset)" if trial.user_attrs.get("baseline") else "")
               + f": {shown or 'preset values'}; preprocess {str(preprocess) or 'none'!r}")

        started = time.monotonic()
        # Validation only: no test_pairs, the test split is final_evaluation's alone.
        job = TrainJob(ctx.registry, data=s.data, holdout=s.holdout,
                       train_pairs=ctx.train_pairs, eval_pairs=ctx.val_pairs,
                       metrics=ctx.metrics, callbacks=[PruningCallback(trial, ctx.metric.name)],
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
        if result.stopped == "interrupted":
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        value = result.metrics.get(ctx.metric.name)
        trial.set_user_attr("val", result.validation or result.metrics)
        if value is None or not math.isfinite(value):
            return _failed(trial, f"no finite validation {ctx.metric.name} ({value})")
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
            "higher_is_better": metric.higher_is_better, "data": settings.data,
            "holdout": settings.holdout.to_dict(),
            "mode": "grid" if settings.grid is not None else "search",
            "grid": settings.grid, "space": space.describe(), "limits": settings.limits,
            "folder": str(settings.folder.resolve())}


def open_study(settings: TuneSettings, metric: AnyMetric, space: Space,
               warmup_epochs: int = 1) -> Any:
    """Create the study, or load it and check it is the same kind of study."""
    optuna = _optuna()
    storage = open_storage(settings.storage, settings.folder)
    direction = "maximize" if metric.higher_is_better else "minimize"
    higher = metric.higher_is_better
    sampler: Any
    if settings.grid is not None:
        sampler = optuna.samplers.GridSampler({"preprocess": settings.grid}, seed=0)
        pruner = optuna.pruners.NopPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.seed)
        pruner = _pruner(settings.pruner, higher, warmup_epochs)
    study = optuna.create_study(study_name=settings.study, storage=storage, sampler=sampler,
                                pruner=pruner, direction=direction, load_if_exists=True)
    stored = study.user_attrs.get(ATTR)
    mine = _settings_attr(settings, metric, space)
    if stored is None:
        study.set_user_attr(ATTR, mine)
        return study
    for key in ("model", "metric", "mode", "data", "holdout", "grid"):
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
    metric = _metric(registry, settings.metric)
    metrics = evaluate.default_metrics(registry)
    if metric.name not in [m.name for m in metrics]:
        metrics.insert(0, metric)
    space = build_space(model_cls, settings.preset, registry, settings.space_file)
    if settings.grid is not None:
        for spec in settings.grid:  # every pipeline must parse before the first trial
            from restorekit.pipeline import Pipeline

            Pipeline.parse("" if spec == "none" else spec, registry)
        settings.trials = settings.trials or len(settings.grid)
    if settings.trials <= 0:
        raise UsageError("--trials: give the number of trials (> 0)")
    # Prune a trial only after a quarter of the base configuration's epochs.
    base = model_cls.make_options(None, **preset_values(model_cls, settings.preset, space.fixed))
    study = open_study(settings, metric, space,
                       warmup_epochs=max(1, int(getattr(base, "epochs", 4)) // 4))
    train_pairs = open_pairs(settings.data, "train", skip_bad=settings.skip_bad,
                             holdout=settings.holdout)
    val_pairs = open_pairs(settings.data, "val", skip_bad=settings.skip_bad,
                           holdout=settings.holdout)
    ctx = _Context(settings, registry, model_cls, space, metrics, metric, settings.folder,
                   train_pairs, val_pairs)
    _requeue(study, settings)
    done = counted(study)
    _print(f"tune: study {settings.study!r} ({storage_url(settings.storage, settings.folder)}):"
           f" {done} of {settings.trials} trials done; {model_cls.name} preset "
           f"{settings.preset}, objective validation {metric.name} "
           f"({'higher' if metric.higher_is_better else 'lower'} is better) on "
           f"{val_pairs.describe()}")
    if done < settings.trials:
        bar = tqdm(total=settings.trials, initial=done, desc=f"study {settings.study}",
                   unit="trial", dynamic_ncols=True)

        def stop_when_done(study: Any, trial: Any) -> None:
            bar.n = min(counted(study), settings.trials)
            bar.refresh()
            if counted(study) >= settings.trials:
                study.stop()

        try:
            study.optimize(_objective(ctx), timeout=settings.timeout_min * 60 or None,
                           callbacks=[stop_when_done])
        finally:
            bar.close()
    return study


def _requeue(study: Any, settings: TuneSettings) -> None:
    """A new search starts with the preset itself; a grid re-runs interrupted pipelines."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if settings.grid is None:
        if not trials:
            study.enqueue_trial({}, user_attrs={"baseline": True})
        return
    ok = {t.params.get("preprocess") for t in trials if t.state != TrialState.FAIL
          or "fail_reason" in t.user_attrs}
    waiting = {t.params.get("preprocess") for t in trials if t.state == TrialState.WAITING}
    for t in trials:
        spec = t.params.get("preprocess")
        if t.state == TrialState.FAIL and spec not in ok | waiting and spec in settings.grid:
            study.enqueue_trial({"preprocess": spec})
            waiting.add(spec)


# -- the end of a study -----------------------------------------------------------------------
def reported_trials(study: Any) -> list[Any]:
    """The trials the test split is evaluated for: every completed pipeline of a grid; else
    the best trial and the preset's."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return []
    if study.user_attrs.get(ATTR, {}).get("mode") == "grid":
        return sorted(done, key=lambda t: t.number)
    best = study.best_trial
    chosen = [best] + [t for t in done if t.user_attrs.get("baseline") and
                       t.number != best.number]
    return chosen


def is_finished(study: Any, trials: int) -> bool:
    """Enough trials count and none is running (another worker may still improve it)."""
    from optuna.trial import TrialState

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
            _print(f"tune: trial {t.number}: its run folder {run} is not on this machine "
                   f"(host {t.user_attrs.get('host', '?')}); run 'restorekit tune --report' "
                   f"there to evaluate it")
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
    if trial.number == study.best_trial.number:
        tags.append("best")
    if trial.user_attrs.get("baseline"):
        tags.append(f"preset {attrs.get('preset')}")
    return f"trial {trial.number} ({', '.join(tags)})" if tags else f"trial {trial.number}"


def export_best(study: Any, output: Path) -> dict[str, Any]:
    """Write the best trial's configuration (a run's ``config.json`` format) to ``output``."""
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"--export-best: study {study.study_name!r} has no completed trial")
    best = study.best_trial
    config = dict(best.user_attrs.get("config") or {})
    if not config:
        raise TuneError(f"--export-best: trial {best.number} has no stored configuration")
    config["tune"] = {"study": study.study_name, "trial": best.number, "value": best.value,
                      "metric": study.user_attrs.get(ATTR, {}).get("metric"),
                      "params": best.params}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return config

