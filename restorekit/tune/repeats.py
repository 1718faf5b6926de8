"""Repeats after a study: configurations trained again with the same K seeds, with paired
intervals, the verdict line, and the classic baselines.

``restorekit tune ... --repeats K`` re-trains, once the search is over, the top trials
(``--repeat-top N``, by validation) and the preset, or every pipeline of a preprocessing
grid, with K seeds each: the same seeds for every configuration (derived from the study
seed), so that differences are paired by seed and by image. Each repeat is an ordinary
training run in ``STUDY/repeats/NNNN-sSEED`` with the trial's stored configuration (only the
seed changed), trained on the training pairs without the validation split and evaluated
on the validation split. Repeats are not trials: each is a study user attribute
``repeat:NNNN-sSEED`` (never the best of the search, never counted by ``--trials``).

Once every repeat is done, the test split is evaluated once per repeat of the winner (the
best configuration by its mean over the seeds on validation) and of the reference (the
preset; in a grid the pipeline ``none``, else the first one). :func:`verdict` says how
much the winner beats the reference on both splits, with the interval that
:func:`restorekit.tune.stats.decisive` chooses.

The classic baselines (:func:`classic_evaluation`): each pipeline of a grid alone (the
``classic`` model), or the identity and the best classic pipeline (chosen on validation)
of a search, scored on validation and test with their bootstrap intervals.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from restorekit.data import Holdout, open_pairs
from restorekit.engine import TrainJob, load_trained
from restorekit.engine.loading import model_from_metadata
from restorekit.engine.rundir import RunDir
from restorekit.errors import LockError, RestorekitError, UsageError, one_line
from restorekit.plugins import Registry
from restorekit.tune import stats
from restorekit.tune.stats import Interval
from restorekit.tune.study import ATTR, row_label

REPEATS = "repeats"
"""The study folder's folder of repeat runs, and the study attribute of the plan."""
RUN_ATTR = "repeat:"
"""Prefix of the study attribute holding one repeat (``repeat:0003-s1234``)."""
CLASSIC_ATTR = "classic"
"""Study attribute of the classic baselines: ``val``, ``test`` (label -> record) and
``pipelines`` (label -> pipeline)."""
UNITS = {"psnr": "dB ", "psnr_gtmean": "dB "}
SPLITS = {"val": "validation", "test": "test"}


# -- which configurations, which seeds --------------------------------------------------------
def ranked(study: Any) -> list[Any]:
    """The completed trials, best first by the objective: the one place that ranks trials
    (the study's best trial is the first)."""
    from optuna.trial import TrialState

    from restorekit.tune.pareto import value_of

    attrs = study.user_attrs.get(ATTR, {})
    higher, metric = attrs.get("higher_is_better", True), attrs.get("metric", "")
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    # A multi-objective study ranks by its first objective (the metric that picks checkpoints).
    return sorted(done, key=lambda t: (-value_of(study, t, metric) if higher
                                       else value_of(study, t, metric), t.number))


@dataclass
class Plan:
    """What is repeated: ``configs`` (trials, the reference last in a search) with the
    same ``seeds``; ``reference`` is what the others are compared with."""

    seeds: list[int]
    configs: list[Any]
    reference: Any | None
    grid: bool

    def runs(self) -> list[tuple[Any, int, str]]:
        """(trial, seed, key) of every planned repeat."""
        return [(t, s, run_key(t.number, s)) for t in self.configs for s in self.seeds]


def run_key(trial: int, seed: int) -> str:
    """``0003-s1234``: a repeat's folder name and (after ``repeat:``) its attribute."""
    return f"{trial:04d}-s{seed}"


def set_plan(study: Any, count: int, top: int, seed: int | None) -> Plan:
    """Store the repeat plan (K seeds: the first K of the study seed's sequence, the same
    on every later call; a random base when the study has no seed) and return it."""
    stored = study.user_attrs.get(REPEATS) or {}
    base = stored.get("base")
    if base is None:
        base = seed if seed is not None else int(np.random.SeedSequence().entropy)
    study.set_user_attr(REPEATS, {"count": count, "top": top, "base": base,
                                  "seeds": repeat_seeds(base, count)})
    found = plan(study)
    assert found is not None
    return found


def repeat_seeds(base: int, count: int) -> list[int]:
    """``count`` training seeds derived from ``base`` (a prefix of one sequence: asking
    for more seeds later keeps the first ones)."""
    return [int(s) for s in np.random.SeedSequence(base).generate_state(count)]


def plan(study: Any) -> Plan | None:
    """The stored plan applied to the study's trials now; None without ``--repeats``."""
    stored = study.user_attrs.get(REPEATS)
    if not stored:
        return None
    grid = study.user_attrs.get(ATTR, {}).get("mode") == "grid"
    done = ranked(study)
    if grid:
        configs = sorted(done, key=lambda t: t.number)
        plain = [t for t in configs if t.params.get("preprocess") == "none"]
        reference = plain[0] if plain else configs[0] if configs else None
    else:
        preset = [t for t in done if t.user_attrs.get("baseline")]
        reference = preset[0] if preset else None
        configs = [t for t in done if not t.user_attrs.get("baseline")][:stored["top"]]
        configs += preset
    return Plan(list(stored["seeds"]), configs, reference, grid)


def repeats_of(study: Any) -> dict[str, dict[str, Any]]:
    """The stored repeats by key (done or failed)."""
    return {k[len(RUN_ATTR):]: v for k, v in study.user_attrs.items()
            if k.startswith(RUN_ATTR)}


# -- running them -----------------------------------------------------------------------------
def run_repeats(study: Any, registry: Registry, folder: Path, count: int, top: int,
                seed: int | None, skip_bad: bool = False, device: str = "auto") -> Plan:
    """Train the planned repeats not yet stored (a repeat that failed stays failed; one
    interrupted is trained again by the next call) and score each on validation."""
    from restorekit import evaluate

    found = set_plan(study, count, top, seed)
    done = repeats_of(study)
    todo = [(t, s, key) for t, s, key in found.runs() if key not in done]
    if not todo:
        return found
    attrs = study.user_attrs.get(ATTR, {})
    holdout = Holdout.from_dict(attrs.get("holdout"))
    train = open_pairs(attrs.get("data"), "train", skip_bad=skip_bad, holdout=holdout)
    val = open_pairs(attrs.get("data"), "val", skip_bad=skip_bad, holdout=holdout)
    metrics = evaluate.default_metrics(registry)
    if attrs.get("metric") not in [m.name for m in metrics]:
        metrics.insert(0, registry.metric(attrs["metric"]))
    _print(f"tune: repeats: {len(todo)} run(s) to train ({len(found.configs)} "
           f"configuration(s) x {count} seed(s): {', '.join(map(str, found.seeds))})")
    for trial, s, key in todo:
        config = trial.user_attrs.get("config")
        if not config:
            raise UsageError(f"--repeats: trial {trial.number} has no stored configuration")
        # A repeat trains what the trial trained (its --trial-epochs length and limits), not
        # the full-length schedule that --export-best writes.
        config = {**config, "options": trial.user_attrs.get("trial_options", config["options"])}
        run = RunDir(folder / REPEATS / key)
        _print(f"tune: repeat of {row_label(study, trial)} with seed {s} -> {run.path}")
        started = time.monotonic()
        record: dict[str, Any] = {"trial": trial.number, "seed": s,
                                  "run": str(run.path.resolve()), "host": socket.gethostname()}
        try:
            model = model_from_metadata(run.path, config, registry, seed=s)
            job = TrainJob(registry, data=attrs.get("data"), holdout=holdout,
                           train_pairs=train, eval_pairs=val,
                           metrics=metrics, extra={"study": study.study_name,
                                                   "repeat_of": trial.number, "seed": s})
            result = job.train(model, run, overwrite=True)
            if result.stopped == "interrupted":
                raise KeyboardInterrupt
            trained = load_trained(run.path, registry, device=device)
            record["val"] = evaluate.evaluate(val, trained.enhance, metrics,
                                              desc=f"validation, repeat {key}").to_json()
        except LockError as exc:  # another worker trains it: its result is stored there
            _print(f"tune: repeat {key} skipped: {one_line(exc)}")
            continue
        except (RestorekitError, ValueError, RuntimeError) as exc:  # NaN loss, OOM, ...
            record["fail_reason"] = one_line(exc)
            _print(f"tune: repeat {key} failed: {record['fail_reason']}")
        record["seconds"] = round(time.monotonic() - started, 1)
        study.set_user_attr(RUN_ATTR + key, record)
    return found


def evaluate_tests(study: Any, registry: Registry, device: str = "auto") -> None:
    """Once every planned repeat is done, score the winner's and the reference's repeats
    on the test split, once each."""
    from restorekit import evaluate

    found = plan(study)
    if found is None or found.reference is None:
        return
    done = repeats_of(study)
    if any(key not in done for _, _, key in found.runs()):
        return
    winner = _winner(study, found, done)
    chosen = {found.reference.number} | ({winner.number} if winner is not None else set())
    todo = [(t, key) for t, _, key in found.runs()
            if t.number in chosen and "val" in done[key]
            and "test" not in done[key]]
    if not todo:
        return
    test = open_pairs(study.user_attrs.get(ATTR, {}).get("data"), "test")
    metrics = evaluate.default_metrics(registry)
    _print(f"tune: repeats: the test split ({test.describe()}) for {len(todo)} repeat run(s) "
           f"of the winner and the reference")
    for _, key in todo:
        record = dict(done[key])
        model = load_trained(record["run"], registry, device=device)
        record["test"] = evaluate.evaluate(test, model.enhance, metrics,
                                           desc=f"test, repeat {key}").to_json()
        study.set_user_attr(RUN_ATTR + key, record)


def classic_evaluation(study: Any, registry: Registry) -> dict[str, Any]:
    """The classic baselines on validation and test, stored once with the study: each
    pipeline of a grid alone (``none``: the input itself), or the identity and the best
    classic pipeline by the objective on validation."""
    from restorekit import evaluate
    from restorekit.pipeline import Pipeline

    stored = study.user_attrs.get(CLASSIC_ATTR)
    if stored:
        return stored
    attrs = study.user_attrs.get(ATTR, {})
    holdout = Holdout.from_dict(attrs.get("holdout"))
    val = open_pairs(attrs.get("data"), "val", holdout=holdout)
    metrics = evaluate.default_metrics(registry)
    if attrs.get("metric") not in [m.name for m in metrics]:
        metrics.insert(0, registry.metric(attrs["metric"]))
    if attrs.get("mode") == "grid":
        pipelines = {f"{spec} alone": "" if spec == "none" else spec
                     for spec in attrs.get("grid") or []}
    else:  # identity, and the best candidate on validation (labelled "classic (SPEC)")
        objective = [m for m in metrics if m.name == attrs.get("metric")]
        rows = evaluate.classic_baselines(val, objective + [m for m in metrics
                                                            if m not in objective],
                                          registry, progress=False)
        pipelines = {label: "" if label == "identity" else label[len("classic ("):-1]
                     for label in rows}
    test = open_pairs(attrs.get("data"), "test")
    result: dict[str, Any] = {"pipelines": pipelines, "val": {}, "test": {}}
    for label, spec in pipelines.items():
        enhance = Pipeline.parse(spec, registry) if spec else None
        for split, pairs in (("val", val), ("test", test)):
            result[split][label] = evaluate.evaluate(pairs, enhance, metrics, progress=False
                                                     ).record()
    study.set_user_attr(CLASSIC_ATTR, result)
    return result


def _print(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# -- what they say ----------------------------------------------------------------------------
@dataclass
class Row:
    """One configuration on one split for one metric: its mean over the seeds with the
    t-interval over seeds and the bootstrap over images, and the paired difference to
    the reference (None for the reference itself)."""

    trial: Any
    label: str
    by_seed: Interval
    by_image: Interval
    diff_seed: Interval | None
    diff_image: Interval | None

    @property
    def diff(self) -> Interval | None:
        """The difference's decisive interval."""
        return None if self.diff_seed is None else stats.decisive(self.diff_seed,
                                                                  self.diff_image)


def _scores(done: dict[str, dict[str, Any]], trial: Any, seeds: Sequence[int], split: str,
            metric: str) -> tuple[dict[int, float], dict[int, dict[str, float]]]:
    """(seed -> mean, seed -> image -> value) of a configuration's repeats on ``split``."""
    means, images = {}, {}
    for s in seeds:
        scored = done.get(run_key(trial.number, s), {}).get(split)
        if scored and metric in scored["mean"]:
            means[s] = float(scored["mean"][metric])
            images[s] = {k: float(v[metric]) for k, v in scored.get("images", {}).items()}
    return means, images


def rows(study: Any, split: str = "val", metric: str | None = None) -> list[Row]:
    """The repeated configurations scored on ``split`` (every seed done), by ``metric``
    (default: the objective)."""
    found = plan(study)
    if found is None:
        return []
    metric = metric or study.user_attrs.get(ATTR, {}).get("metric", "psnr")
    done = repeats_of(study)
    ref_means, ref_images = ({}, {}) if found.reference is None else \
        _scores(done, found.reference, found.seeds, split, metric)
    ref = None if found.reference is None else found.reference.number
    out = []
    for t in found.configs:
        means, images = _scores(done, t, found.seeds, split, metric)
        if not means:
            continue
        diff_seed = diff_image = None
        if t.number != ref and ref_means:
            diff_seed = stats.t_interval(list(stats.paired_differences(means,
                                                                       ref_means).values()))
            common = [s for s in means if s in ref_means]
            diff_image = stats.paired_bootstrap(
                stats.mean_over_runs([images[s] for s in common]),
                stats.mean_over_runs([ref_images[s] for s in common]))
        out.append(Row(t, row_label(study, t), stats.t_interval(list(means.values())),
                       stats.bootstrap(list(stats.mean_over_runs(list(images.values()))
                                            .values())), diff_seed, diff_image))
    return out


def _winner(study: Any, found: Plan, done: dict[str, dict[str, Any]]) -> Any | None:
    """The best configuration other than the reference, by its mean over the seeds on
    validation."""
    attrs = study.user_attrs.get(ATTR, {})
    higher = attrs.get("higher_is_better", True)
    reference = None if found.reference is None else found.reference.number
    best, best_mean = None, 0.0
    for t in found.configs:
        means = _scores(done, t, found.seeds, "val", attrs.get("metric", "psnr"))[0]
        if t.number == reference or not means:
            continue
        mean = float(np.mean(list(means.values())))
        if best is None or (mean > best_mean if higher else mean < best_mean):
            best, best_mean = t, mean
    return best


def _name(study: Any, trial: Any, grid: bool, reference: bool) -> str:
    if grid:
        return f"pipeline {trial.params.get('preprocess', '?')}"
    return "the preset" if reference else f"trial {trial.number}"


def verdict(study: Any) -> str | None:
    """One line: how much the winner beats the reference on validation and test, with the
    decisive 95 % intervals of the paired differences; None before the repeats are done."""
    found = plan(study)
    if found is None or found.reference is None:
        return None
    attrs = study.user_attrs.get(ATTR, {})
    metric, higher = attrs.get("metric", "psnr"), attrs.get("higher_is_better", True)
    winner = _winner(study, found, repeats_of(study))
    if winner is None:
        return None
    diffs = {}
    for split in SPLITS:
        row = [r for r in rows(study, split) if r.trial.number == winner.number]
        if row and row[0].diff is not None:
            diff = row[0].diff
            diffs[split] = diff if higher else diff.flipped()  # as an improvement
    if "val" not in diffs:
        return None
    unit = UNITS.get(metric, "") + metric.upper()
    digits = 2 if UNITS.get(metric) else 4
    me, ref = _name(study, winner, found.grid, False), _name(study, found.reference,
                                                              found.grid, True)
    val = diffs["val"]
    head = f"{me} beats {ref} by " if val.mean > 0 else f"{me} does not beat {ref}: "
    line = head + _shown(val, digits, f" {unit}", "95 % CI ") + " on validation"
    line += f", {_shown(diffs['test'], digits)} on test" if "test" in diffs else \
        " (test not evaluated yet)"
    words = {"better": "significant", "worse": "significantly worse",
             "noise": "not significant"}
    said = {split: words[d.significance()] for split, d in diffs.items()}
    if len(set(said.values())) == 1:
        return line + f": {said['val']} on " + " and ".join(SPLITS[s] for s in said)
    return line + ": " + ", ".join(f"{w} on {SPLITS[s]}" for s, w in said.items())


def _shown(iv: Interval, digits: int, unit: str = "", ci: str = "") -> str:
    """``0.84 dB PSNR (95 % CI 0.31 to 1.37, t over 5 seeds)``."""
    if not iv.known:
        return f"{iv.mean:.{digits}f}{unit} (no interval: {iv.method()})"
    return (f"{iv.mean:.{digits}f}{unit} ({ci}{iv.low:.{digits}f} to {iv.high:.{digits}f}, "
            f"{iv.method()})")


def interval_text(iv: Interval | None, digits: int = 4) -> str:
    """``[low, high]``, or a dash where there is none."""
    if iv is None or not iv.known:
        return "–"
    return f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def table_rows(study: Any, split: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the repeats table of ``split`` (the objective)."""
    found = plan(study)
    metric = study.user_attrs.get(ATTR, {}).get("metric", "psnr")
    ref = "the reference" if found is None or found.reference is None else \
        _name(study, found.reference, found.grid, True)
    header = ["configuration", "seeds", f"mean {metric}", "t over seeds",
              "bootstrap over images", f"Δ vs {ref}", "Δ: t over seeds",
              "Δ: paired bootstrap over images"]
    body = []
    for r in rows(study, split):
        body.append([r.label, str(r.by_seed.n), f"{r.by_seed.mean:.4f}",
                     interval_text(r.by_seed), interval_text(r.by_image),
                     "" if r.diff_seed is None else f"{r.diff_seed.mean:+.4f}",
                     "" if r.diff_seed is None else interval_text(r.diff_seed),
                     "" if r.diff_image is None else interval_text(r.diff_image)])
    return header, body


def notes(study: Any) -> list[str]:
    """What the repeat tables' intervals are."""
    found = plan(study)
    if found is None:
        return []
    return [f"{len(found.seeds)} seed(s) per configuration, the same for all (paired): "
            f"{', '.join(map(str, found.seeds))}; Δ = configuration - reference, per seed "
            f"(t) and per image (each image's mean over the seeds, bootstrap with "
            f"{stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED})",
            f"95 % intervals; the verdict uses the t-interval over seeds from "
            f"{stats.SEEDS_FOR_T} seeds on, else the image bootstrap where there are at "
            f"least {stats.IMAGES_FOR_BOOTSTRAP} images (it leaves out the variation between "
            f"seeds), else the t-interval over the few seeds"]


def summary_text(study: Any, registry: Registry) -> str:
    """The classic baselines, the repeat tables and the verdict line (plain text)."""
    from restorekit import evaluate

    out: list[str] = []
    classic = study.user_attrs.get(CLASSIC_ATTR)
    if classic:
        metrics = evaluate.default_metrics(registry)
        for split in SPLITS:
            if classic.get(split):
                out += ["", f"classic baselines on the {SPLITS[split]} split "
                        f"(the pipeline alone, nothing learned):",
                        evaluate.format_table(classic[split], metrics)]
    for split in SPLITS:
        header, body = table_rows(study, split)
        if body:
            out += ["", f"repeats on the {SPLITS[split]} split:", _columns([header, *body])]
    if out and plan(study) is not None:
        out += notes(study)
    line = verdict(study)
    if line:
        out += ["", "verdict: " + line]
    return "\n".join(out).lstrip("\n")


def _columns(lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in lines)
