"""Multi-objective studies: the objectives, a trial's step time, the best trial(s).

``restorekit tune MODEL --objectives psnr,ssim`` makes an Optuna study with one direction
per objective (each metric's ``higher_is_better``); ``step_time``, the trial's measured
mean training step time (lower is better), puts quality against cost
(``--objectives psnr,step_time``). Such a study has no single best trial but a Pareto
front: the trials no other trial beats on every objective (``study.best_trials``).
:func:`best_trials` is the one place the rest of :mod:`restorekit.tune` asks for "the
best": the best trial of a single-objective study, the front of a multi-objective one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from restorekit.api import AnyMetric
from restorekit.engine import Callback, Trainer
from restorekit.errors import PluginError, RestorekitError, UsageError
from restorekit.plugins import Registry

STEP_TIME = "step_time"
"""The cost objective: a trial's mean training step time in seconds (:class:`StepTimer`)."""
MAX_REPORTED = 5
"""At most this many trials of a Pareto front (the best by the first objective) are scored
on the test split and shown in the score tables; the front table lists them all."""


@dataclass(frozen=True)
class Objective:
    """One objective of a study: a metric on the validation split, or ``step_time``."""

    name: str
    higher_is_better: bool
    metric: AnyMetric | None = None
    """The registered metric; None for ``step_time``."""

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"


def parse_objectives(spec: str) -> list[str]:
    """The names of ``--objectives psnr,ssim``: two or more, none twice."""
    names = [n.strip() for n in spec.split(",")]
    if any(not n for n in names):
        raise UsageError(f"--objectives: an empty name in {spec!r} (expected names separated "
                         f"by commas, e.g. psnr,ssim)")
    if len(names) < 2:
        raise UsageError(f"--objectives: give two or more objectives, e.g. psnr,ssim or "
                         f"psnr,{STEP_TIME} (for one, use --metric {names[0]})")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--objectives: {', '.join(twice)} is listed twice")
    return names


def resolve_objectives(registry: Registry, names: Sequence[str]) -> list[Objective]:
    """The objectives ``names`` stand for: registered metrics with a direction, or
    ``step_time``; at least one must be a metric (the quality side)."""
    objectives = []
    for name in names:
        if name == STEP_TIME:
            objectives.append(Objective(STEP_TIME, higher_is_better=False))
            continue
        try:
            metric = registry.metric(name)
        except (PluginError, RestorekitError) as exc:
            raise UsageError(f"--objectives: {exc}; or {STEP_TIME}, the mean training "
                             f"step time") from None
        if metric.higher_is_better is None:
            raise UsageError(f"--objectives: {name!r} is a statistic with no better direction; "
                             f"an objective needs a metric where higher or lower is better")
        objectives.append(Objective(name, metric.higher_is_better, metric))
    if all(o.metric is None for o in objectives):
        raise UsageError(f"--objectives: name at least one metric ({STEP_TIME} alone says "
                         f"nothing about the images)")
    return objectives


def parse_sampler(spec: str) -> tuple[str, int]:
    """``--sampler``: ``tpe`` (single and multi-objective; population 0) or
    ``nsga2[:POPULATION]`` (NSGA-II; its first generation, 50 trials by default, is
    random)."""
    name, _, arg = spec.partition(":")
    if name == "tpe" and not arg:
        return name, 0
    if name == "nsga2":
        size = int(arg) if arg.isdigit() else 50 if not arg else 0
        if size < 2:
            raise UsageError(f"--sampler nsga2:POPULATION needs a whole number >= 2 "
                             f"(got {arg!r})")
        return name, size
    raise UsageError(f"--sampler: expected tpe or nsga2[:POPULATION] (got {spec!r})")


def make_sampler(spec: str, seed: int | None) -> Any:
    """The Optuna sampler ``--sampler spec`` names (:func:`parse_sampler`)."""
    import optuna

    name, size = parse_sampler(spec)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    from restorekit.tune import workers

    return workers.sampler(seed)  # reseeded per trial: workers never repeat suggestions


class StepTimer(Callback):
    """Measures a trial's mean training step time: the training loop's wall time per epoch
    (from the loader's start to the last step's losses read back), evaluations and
    checkpoints excluded, over its steps. The trial's first step (the warm-up of the process
    and the device, which the first trial of a process pays most) is left out unless it is
    the only one."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self.first: float | None = None
        """The first step's seconds."""
        self._started: tuple[float, int] | None = None

    def on_epoch_start(self, trainer: Trainer, batches: int) -> None:
        self._started = (time.perf_counter(), trainer.state.step)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.first is None and self._started is not None:
            now = time.perf_counter()
            self.first = now - self._started[0]
            self._started = (now, trainer.state.step)

    def on_batches_end(self, trainer: Trainer) -> None:
        if self._started is not None:
            began, step = self._started
            self.seconds += time.perf_counter() - began
            self.steps += trainer.state.step - step
            self._started = None

    @property
    def step_time(self) -> float:
        """Seconds per step (NaN before the first step)."""
        if self.steps:
            return self.seconds / self.steps
        return math.nan if self.first is None else self.first


def objective_values(objectives: Sequence[Objective], metrics: dict[str, float],
                     step_time: float) -> tuple[float, ...]:
    """A trial's values, in the study's order (NaN for a missing metric)."""
    return tuple(step_time if o.metric is None else float(metrics.get(o.name, math.nan))
                 for o in objectives)


# -- reading a study ----------------------------------------------------------------------------
def is_multi(study: Any) -> bool:
    """True for a study with several objectives."""
    return len(study.directions) > 1


def objective_names(study: Any) -> list[str]:
    """The names of the study's objectives (set by ``open_study``)."""
    return list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])


def best_trials(study: Any) -> list[Any]:
    """The best trial of a single-objective study, or the Pareto front of a multi-objective
    one ordered by its first objective, best first (empty without a completed trial)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if not is_multi(study):
        return [study.best_trial]
    higher = study.directions[0] == StudyDirection.MAXIMIZE
    return sorted(study.best_trials, key=lambda t: -t.values[0] if higher else t.values[0])


def value_of(study: Any, trial: Any, metric: str) -> float:
    """``trial``'s value of the objective ``metric`` (its only value in a single-objective
    study)."""
    if not is_multi(study):
        return float(trial.value)
    return float(trial.values[objective_names(study).index(metric)])


def value_cell(trial: Any) -> float | str | None:
    """A trial's value for a table: its value, its values joined by ``/``, or None."""
    if trial.values is None:
        return None
    if len(trial.values) == 1:
        return float(trial.values[0])
    return " / ".join(f"{v:.4g}" for v in trial.values)


def objectives_text(study: Any) -> str:
    """``psnr ↑, step_time ↓``: the objectives with their directions."""
    from optuna.study import StudyDirection

    return ", ".join(f"{n} {'↑' if d == StudyDirection.MAXIMIZE else '↓'}"
                     for n, d in zip(objective_names(study), study.directions, strict=True))


def front_note(study: Any) -> str:
    """What the front is, and which of its trials the test split scores."""
    front = best_trials(study)
    note = (f"Pareto front of {objectives_text(study)}: {len(front)} trial(s) that no other "
            f"trial beats on every objective (validation split)")
    if len(front) > MAX_REPORTED:
        note += (f"; the test split scores its first {MAX_REPORTED} by "
                 f"{objective_names(study)[0]} and the preset")
    return note


def front_table(study: Any, label: Callable[[Any], str]) -> str:
    """The front as plain text: one row per trial (``label(trial)``), one column per
    objective."""
    headers = ["trial", *objectives_text(study).split(", ")]
    body = [[label(t), *(f"{v:.4f}" for v in t.values)] for t in best_trials(study)]
    widths = [max(len(row[i]) for row in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [headers, ["-" * w for w in widths], *body]]
    return "\n".join([front_note(study) + ":", *lines])
