"""A study's ``report.html``: best trial, all trials, pictures by Optuna's matplotlib module.

Everything is read from the study (any Optuna storage), so ``restorekit tune --report``
can rebuild it at any time, also while workers are still running. The pictures are PNGs
next to the HTML: ``history.png`` (optimisation history), ``importances.png``
(parameter importances), ``intermediate.png`` (validation curves used for pruning) and
``preprocess.png`` (the preprocessing table as bars); a multi-objective study adds
``pareto.png`` (the Pareto front, for 2 or 3 objectives) and the table of the trials on it.
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from restorekit.atomic import atomic_path, atomic_write_text
from restorekit.engine.report import Raw, cell, table
from restorekit.engine.rundir import RunDir
from restorekit.evaluate import DEFAULT_METRICS
from restorekit.tune import repeats
from restorekit.tune.pareto import (
    best_trials,
    front_note,
    is_multi,
    objective_names,
    objectives_text,
    value_cell,
    value_of,
)
from restorekit.tune.study import ATTR, TEST_ATTR, TRIALS, row_label, short

REPORT = RunDir.REPORT  # a study folder's report is named like a run folder's
PICTURES = ("history.png", "importances.png", "intermediate.png", "preprocess.png",
            "pareto.png")
IMPORTANCE_TRIALS = 10
"""Parameter importances are drawn from this many complete trials on (fewer say nothing)."""


def _save(draw: Callable[[], Any], path: Path) -> str | None:
    """Draw with ``draw()`` (an Axes or array of Axes) and save as ``path``; an error
    (too few trials, say) becomes the returned note instead of a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = first.figure
        figure.set_size_inches(7.5, 4.2)
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
        return None
    except Exception as exc:  # noqa: BLE001 - any plotting problem is only a missing picture
        path.unlink(missing_ok=True)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        plt.close("all")


def preprocess_rows(study: Any) -> list[tuple[str, Any]]:
    """(pipeline, trial) for the preprocessing table: every completed trial of a grid, or
    the best completed trial of each pipeline a search tried."""
    from optuna.trial import TrialState

    higher = study.user_attrs.get(ATTR, {}).get("higher_is_better", True)
    metric = study.user_attrs.get(ATTR, {}).get("metric", "value")

    def value(t: Any) -> float:
        return value_of(study, t, metric)

    best: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE:
            continue
        spec = t.user_attrs.get("preprocess", "") or "none"
        old = best.get(spec)
        if old is None or (value(t) > value(old) if higher else value(t) < value(old)):
            best[spec] = t
    return sorted(best.items(), key=lambda kv: -value(kv[1]) if higher else value(kv[1]))


def _preprocess_chart(study: Any, metric: str) -> Callable[[], Any]:
    def draw() -> Any:
        import matplotlib.pyplot as plt

        rows = preprocess_rows(study)
        if not rows:
            raise ValueError("no completed trial")
        test = study.user_attrs.get(TEST_ATTR, {})
        fig, ax = plt.subplots()
        labels = [spec for spec, _ in rows]
        ys = range(len(rows))
        ax.barh([y + 0.2 for y in ys], [value_of(study, t, metric) for _, t in rows],
                height=0.4, label="validation")
        tested = [test.get(str(t.number), {}).get(metric) for _, t in rows]
        if any(v is not None for v in tested):
            ax.barh([y - 0.2 for y in ys], [v or 0 for v in tested], height=0.4, label="test")
        ax.set_yticks(list(ys), labels)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_title("preprocessing pipelines")
        ax.legend()
        return ax

    return draw


def write_study_report(study: Any, folder: Path) -> Path:
    """Write ``folder/report.html`` and its pictures; returns the HTML's path."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    attrs = study.user_attrs.get(ATTR, {})
    metric = attrs.get("metric", "value")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    multi = is_multi(study)
    # A multi-objective study's history and preprocessing show its (first) metric.
    target = (lambda t: value_of(study, t, metric)) if multi else None
    notes = {
        "history.png": _save(lambda: plots.plot_optimization_history(study, target=target,
                                                                     target_name=metric),
                             folder / "history.png"),
        "importances.png": _save(lambda: plots.plot_param_importances(study),
                                 folder / "importances.png")
        if len(complete) >= IMPORTANCE_TRIALS else _no_importances(folder, len(complete)),
        "intermediate.png": _save(lambda: plots.plot_intermediate_values(study),
                                  folder / "intermediate.png"),
        "preprocess.png": _save(_preprocess_chart(study, metric), folder / "preprocess.png"),
    }
    if multi:
        notes["pareto.png"] = _save(_pareto_chart(study), folder / "pareto.png")
    trials = study.get_trials(deepcopy=False)
    test = study.user_attrs.get(TEST_ATTR, {})
    objective = (f"objectives: validation <b>{html.escape(objectives_text(study))}</b>"
                 if multi else f"objective: validation <b>{cell(metric)}</b> ("
                 f"{'higher' if attrs.get('higher_is_better', True) else 'lower'} is better)")
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>",
             f"<p>model <b>{cell(attrs.get('model'))}</b>, preset {cell(attrs.get('preset'))}"
             f", {objective}, "
             f"{attrs.get('mode', 'search')}; data {cell(attrs.get('data') or 'embedded')}"
             f", validation split {cell(json.dumps(attrs.get('holdout')))}; "
             f"{len(trials)} trials: "
             + ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}"
                         for s in TrialState if any(t.state == s for t in trials))
             + "</p>"]
    if complete and multi:
        parts += _pareto_section(study, notes["pareto.png"])
        parts.append(_scores_table(study))
    elif complete:
        best = study.best_trial
        parts.append(f"<h2>Best: trial {best.number}, {metric} {best.value:.4f}</h2>")
        parts.append(_best_table(study, best))
        parts.append(_scores_table(study))
    parts += _repeats_section(study)
    parts.append("<h2>Preprocessing</h2>")
    if attrs.get("mode") == "grid":
        parts.append("<p>An ablation: every pipeline with the preset's hyperparameters.</p>")
    else:
        parts.append("<p>In a search each pipeline's row is the best trial that used it, "
                     "with its own hyperparameters: pipeline effects are confounded with "
                     "hyperparameters (an ablation that isolates preprocessing: "
                     "<code>--grid-preprocess</code> with <code>--repeats</code>).</p>")
    rows = []
    for spec, t in preprocess_rows(study):
        scores = t.user_attrs.get("val", {})
        tested = test.get(str(t.number), {})
        rows.append([spec, t.number, _score(scores, metric), _score(scores, "ssim"),
                     _score(scores, "ciede2000"), _score(tested, metric),
                     _score(tested, "ssim"), _score(tested, "ciede2000")])
    parts.append(table(["pipeline", "trial", f"val {metric}", "val ssim", "val ciede2000",
                         f"test {metric}", "test ssim", "test ciede2000"], rows))
    parts += _classic_section(study)
    for name, title in (("history.png", "Optimisation history"),
                        ("importances.png",
                         f"Parameter importances ({len(complete)} complete trials)"),
                        ("intermediate.png", "Validation during training (pruning)"),
                        ("preprocess.png", "Preprocessing pipelines")):
        parts.append(f"<h2>{title}</h2>")
        if notes[name] is None:
            parts.append(f'<img src="{name}" alt="{title}">')
        else:
            parts.append(f"<p>(no picture: {html.escape(notes[name])})</p>")
    parts.append("<h2>All trials</h2>")
    values = " / ".join(objective_names(study)) if multi else metric
    parts.append(table(["trial", "state", values, "seconds", "parameters", "preprocess",
                         "note", "run"], [_trial_row(t, folder) for t in trials]))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>study "
            f"{html.escape(study.study_name)}</title><style>body{{font-family:sans-serif;"
            "max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}"
            "img{max-width:100%}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    path = folder / REPORT
    atomic_write_text(path, page)
    return path


def _pareto_chart(study: Any) -> Callable[[], Any]:
    def draw() -> Any:
        from optuna.visualization import matplotlib as plots

        names = objective_names(study)
        if len(names) > 3:
            raise ValueError(f"{len(names)} objectives; a picture of the front needs 2 or 3")
        return plots.plot_pareto_front(study, target_names=names)

    return draw


def _pareto_section(study: Any, picture_note: str | None) -> list[str]:
    """The trials on the Pareto front with every objective value, and ``pareto.png``."""
    front = best_trials(study)
    rows = [[row_label(study, t), *t.values, _params(t), t.user_attrs.get("preprocess", "")
             or "none"] for t in front]
    parts = [f"<h2>Pareto front: trial{'s' if len(front) > 1 else ''} "
             f"{', '.join(str(t.number) for t in front)}</h2>",
             f"<p>{html.escape(front_note(study))}.</p>",
             table(["trial", *objectives_text(study).split(", "), "parameters", "preprocess"],
                   rows)]
    if picture_note is None:
        parts.append('<img src="pareto.png" alt="Pareto front">')
    else:
        parts.append(f"<p>(no picture of the front: {html.escape(picture_note)})</p>")
    return parts


def _scores_table(study: Any) -> str:
    from restorekit.tune.study import reported_trials

    test = study.user_attrs.get(TEST_ATTR, {})
    rows = []
    for t in reported_trials(study):
        val = t.user_attrs.get("val", {})
        tested = test.get(str(t.number), {})
        rows.append([row_label(study, t), *(_score(val, n) for n in DEFAULT_METRICS),
                     *(_score(tested, n) for n in DEFAULT_METRICS)])
    return table(["trial", *(f"val {n}" for n in DEFAULT_METRICS),
                  *(f"test {n}" for n in DEFAULT_METRICS)], rows) + _INTERVAL_NOTE


_INTERVAL_NOTE = ("<p>[low, high]: 95 % bootstrap interval of the mean over the images, where "
                  "the record has one (none for a single image).</p>")


def _score(record: dict[str, Any], name: str) -> Any:
    """``mean [low, high]`` of a record with ``intervals`` (an evaluation's record), else
    the plain value (or None)."""
    value = record.get(name)
    interval = (record.get("intervals") or {}).get(name)
    if value is None or not interval:
        return value
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _best_table(study: Any, best: Any) -> str:
    """The best trial's option values beside the preset's, from their stored
    configurations: the searched options and every option where they differ."""
    preset = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")
              and t.user_attrs.get("config")]
    mine = best.user_attrs.get("config") or {}
    theirs = preset[0].user_attrs["config"] if preset else {}
    options, other = mine.get("options", {}), theirs.get("options", {})
    searched = set(study.user_attrs.get(ATTR, {}).get("space", {}).get("model", {}))
    names = [k for k in options if k in searched or (other and other.get(k) != options[k])]
    rows = [[k, short(options[k]), short(other[k]) if k in other else None] for k in names]
    rows.append(["preprocess", mine.get("preprocess") or "none",
                 (theirs.get("preprocess") or "none") if theirs else None])
    extra = [f"{k}={short(v)}" for k, v in best.params.items()
             if k not in options and not k.startswith("preprocess")]
    note = f"<p>searched as: {html.escape(', '.join(extra))}</p>" if extra else ""
    header = f"the preset (trial {preset[0].number})" if preset else "the preset"
    return table(["option", f"trial {best.number}", header], rows) + note


def _no_importances(folder: Path, complete: int) -> str:
    (folder / "importances.png").unlink(missing_ok=True)
    return (f"parameter importances need at least {IMPORTANCE_TRIALS} complete trials; this "
            f"study has {complete}")


def _classic_section(study: Any) -> list[str]:
    classic = study.user_attrs.get(repeats.CLASSIC_ATTR)
    if not classic:
        return []
    rows = [[label, *(_score(classic[split].get(label, {}), n)
                      for split in ("val", "test") for n in DEFAULT_METRICS)]
            for label in classic.get("pipelines", {})]
    return ["<h2>Classic baselines</h2>",
            "<p>Each pipeline alone (the <code>classic</code> model, nothing learned), on the "
            "validation and the test split.</p>",
            table(["baseline", *(f"val {n}" for n in DEFAULT_METRICS),
                   *(f"test {n}" for n in DEFAULT_METRICS)], rows) + _INTERVAL_NOTE]


def _repeats_section(study: Any) -> list[str]:
    if repeats.plan(study) is None:
        return []
    parts = ["<h2>Repeats</h2>"]
    line = repeats.verdict(study)
    parts.append(f"<p><b>Verdict:</b> {html.escape(line)}</p>" if line else
                 "<p>No verdict yet: the repeats are not done.</p>")
    for split, name in repeats.SPLITS.items():
        header, body = repeats.table_rows(study, split)
        if body:
            parts += [f"<h3>{name}</h3>", table(header, body)]
    parts += [f"<p>{html.escape(n)}</p>" for n in repeats.notes(study)]
    return parts


def _trial_row(t: Any, folder: Path) -> list[Any]:
    seconds = t.duration.total_seconds() if t.duration is not None else None
    params = _params(t)
    note = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned") or ""
    if t.user_attrs.get("baseline"):
        note = ("the preset; " + note).rstrip("; ")
    if t.user_attrs.get("interrupted"):
        note = "interrupted"
    run = RunDir(folder / TRIALS / f"{t.number:04d}")
    link: Any = ""
    if run.report.is_file():
        link = Raw(f'<a href="{TRIALS}/{t.number:04d}/{RunDir.REPORT}">report</a>')
    return [t.number, t.state.name, value_cell(t), None if seconds is None else round(seconds),
            params, t.user_attrs.get("preprocess", "") or "none", note, link]


def _params(t: Any) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in t.params.items()
                     if not k.startswith("preprocess"))
