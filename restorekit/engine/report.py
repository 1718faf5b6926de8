"""A run's ``report.html`` and its ``losses.svg``/``metrics.svg`` curves (matplotlib).

The charts are inlined in ``report.html`` as SVG (the sample grids are linked from
``samples/``). The report says which split chose the best checkpoint
(:func:`selection_text`), shows the test split's final evaluation (``test.json``: the last
and the selected checkpoint, evaluated once when training ended) and the validation
evaluations made during training, labelled as such.

Everything is read back from the run folder through :class:`RunDir` (config, losses,
metrics, baselines, samples), so a report can be rebuilt for any run folder with
:func:`write_report`.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restorekit.atomic import atomic_write_text
from restorekit.engine.rundir import RunDir

# Keys of a losses.jsonl / metrics.jsonl line that are not curves.
NOT_CURVES = {"epoch", "step", "time", "split"}
ARROWS = {True: "↑", False: "↓", None: ""}  # None: a statistic with no better direction
PANEL_INCHES = (3.8, 2.3)  # one chart panel, 380 x 230 px in a browser

Series = dict[str, list[tuple[float, float]]]


def svg_charts(panels: Mapping[str, Series], hlines: Mapping[str, Mapping[str, float]]
               | None = None, xlabel: str = "step", columns: int = 2) -> str:
    """An SVG document with one line chart per panel (``title -> {label: [(x, y)]}``).

    Drawn with matplotlib's object API (a ``Figure`` of its own, saved by the SVG backend):
    no pyplot, no global backend or style is touched. ``hlines`` (``title -> {label: y}``)
    are dashed reference lines. Each curve is an SVG group ``id="curve-LABEL"``, each
    reference line ``id="reference-LABEL"``.
    """
    from matplotlib.figure import Figure

    hlines = hlines or {}
    names = list(panels) or ["(none)"]
    cols = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows),
                    layout="constrained")
    for i, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, i + 1)
        ax.set_title(name, fontsize=10, fontweight="bold")
        ax.tick_params(labelsize=8)
        series = {label: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                  for label, pts in panels.get(name, {}).items()}
        if not any(series.values()):
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", color="#888",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for label, pts in series.items():
            xs, ys = zip(*pts, strict=True) if pts else ((), ())
            (line,) = ax.plot(xs, ys, linewidth=1.5, label=label,
                              marker="o" if len(pts) == 1 else None)
            line.set_gid(f"curve-{label}")
        references = sorted((k, v) for k, v in hlines.get(name, {}).items() if math.isfinite(v))
        for j, (label, value) in enumerate(references):
            ax.axhline(value, color="#777" if j % 2 == 0 else "#bbb", linestyle="--",
                       linewidth=1, label=f"{label} {value:.4g}").set_gid(f"reference-{label}")
        ax.set_xlabel(xlabel, fontsize=9)
        if len(series) > 1 or references:
            ax.legend(fontsize=7)
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None})  # no date: same data, same file
    text = out.getvalue()
    return text[text.index("<svg"):]  # without the XML prolog, to inline it in HTML


def curves(records: list[dict[str, Any]], skip: set[str] | None = None) -> dict[str, Series]:
    """One panel per numeric key of ``records`` (x = step)."""
    skip = NOT_CURVES | (skip or set())
    panels: dict[str, Series] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in record.items():
            if key in skip or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            panels.setdefault(key, {}).setdefault(key, []).append((float(step), float(value)))
    return panels


class Raw(str):
    """HTML that :func:`table` shows as is (a link, say)."""


def cell(value: Any) -> str:
    """A table cell's HTML: floats to 4 significant digits, ``None`` as a dash, text escaped."""
    if value is None:
        return "–"
    if isinstance(value, Raw):
        return value
    return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; each value goes through :func:`cell`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _config_rows(config: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            rows += [[f"{key}.{k}", json.dumps(v)] for k, v in value.items()]
        else:
            rows.append([key, value if isinstance(value, str) else json.dumps(value)])
    return rows


def _metric_table(final: Mapping[str, Any] | None, baselines: Mapping[str, Mapping[str, Any]],
                  higher_is_better: Mapping[str, bool | None], model_name: str) -> str:
    names = [n for n in higher_is_better] or sorted(
        {k for row in [*baselines.values(), final or {}] for k, v in row.items()
         if k not in NOT_CURVES and _number(v) is not None})
    header = ["", *(f"{n} {ARROWS[higher_is_better[n]]}".rstrip()
                    if n in higher_is_better else n for n in names)]
    rows = []
    if final:
        label = f"{model_name} (epoch {final.get('epoch')}, step {final.get('step')})"
        rows.append([label, *(_estimate(final, n) for n in names)])
    for label, values in baselines.items():
        rows.append([label, *(_estimate(values, n) for n in names)])
    if not rows:
        return "<p>No evaluation yet.</p>"
    note = ("<p>mean [low, high]: the mean over the evaluation images and its 95 % "
            "bootstrap interval.</p>" if any(isinstance(c, str) for r in rows for c in r[1:])
            else "")
    return table(header, rows) + note



def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _estimate(record: Mapping[str, Any], name: str) -> float | str | None:
    """A metric's cell: its mean, as ``mean [low, high]`` where the record (a
    ``metrics.jsonl`` line or a ``baselines.json`` row) holds its interval."""
    mean = _number(record.get(name))
    interval = (record.get("intervals") or {}).get(name)
    if mean is None or not interval:
        return mean
    return f"{cell(mean)} [{cell(float(interval[0]))}, {cell(float(interval[1]))}]"


def selection(run: RunDir) -> dict[str, Any] | None:
    """How the run chose its best checkpoint: ``{"split": "val", "pairs": N, "metric",
    "higher_is_better", "value", "step", "epoch"}`` (the last four None before the first
    validation), ``{"split": None, "pairs": 0}`` for a run without a validation split
    (``--val-fraction 0``: the last checkpoint is the result), None for a run folder made
    before validation splits (no ``val_pairs`` in its ``config.json``)."""
    from restorekit.engine.state import read_metadata

    config = run.read_config()
    if "val_pairs" not in config:
        return None
    pairs = int(config.get("val_pairs") or 0)
    if not pairs:
        return {"split": None, "pairs": 0}
    found: dict[str, Any] = {"split": "val", "pairs": pairs, "metric": None,
                             "higher_is_better": None, "value": None, "step": None,
                             "epoch": None}
    best = run.checkpoint_path(RunDir.BEST)
    record = read_metadata(best).get("best") if best.is_file() else None
    if record and record.get("value") is not None:
        found.update({k: record.get(k) for k in ("metric", "higher_is_better", "value",
                                                 "step")})
        found["epoch"] = next((r.get("epoch") for r in run.read_log("metrics")
                               if r.get("step") == record.get("step")), None)
    return found


def selection_text(chosen: Mapping[str, Any] | None) -> str:
    """One sentence on :func:`selection` (empty for a run made before validation splits):
    ``best checkpoint chosen on the validation split (1 pair) by psnr: epoch 3 (step 24,
    psnr 17.1234)``."""
    if not chosen:
        return ""
    if not chosen.get("split"):
        return ("no validation split (--val-fraction 0): no checkpoint was selected; the "
                "result is the last checkpoint")
    pairs = chosen["pairs"]
    where = f"the validation split ({pairs} pair{'' if pairs == 1 else 's'})"
    if chosen.get("value") is None:
        return f"no evaluation on {where} yet: no best checkpoint"
    return (f"best checkpoint chosen on {where} by {chosen['metric']}: epoch "
            f"{chosen.get('epoch')} (step {chosen['step']}, {chosen['metric']} "
            f"{float(chosen['value']):.4f})")


def _final_table(final: Mapping[str, Any] | None,
                 higher_is_better: Mapping[str, bool | None]) -> str:
    """The test split's final evaluation (``test.json``) as a table, or a sentence."""
    if not final:
        return ("<p>Not yet: the test split is evaluated once, when training ends "
                "(completed or a limit reached).</p>")
    rows = {f"{which} checkpoint (epoch {r.get('epoch')}, step {r.get('step')})": r
            for which, r in (final.get("results") or {}).items()}
    rows.update(final.get("baselines") or {})
    names = [n for n in higher_is_better] or sorted(
        {k for row in rows.values() for k, v in row.items()
         if k not in NOT_CURVES and _number(v) is not None})
    header = ["", *(f"{n} {ARROWS[higher_is_better[n]]}".rstrip()
                    if n in higher_is_better else n for n in names)]
    body = [[label, *(_estimate(row, n) for n in names)] for label, row in rows.items()]
    return (f"<p>{html.escape(str(final.get('data', '')))}: {final.get('pairs')} pairs, "
            f"evaluated once when training ended ({html.escape(str(final.get('stopped')))})."
            f" mean [low, high]: the mean over the images and its 95 % bootstrap interval."
            f"</p>" + table(header, body))


def write_report(run: RunDir | str | Path,
                 higher_is_better: Mapping[str, bool | None] | None = None) -> Path:
    """Write ``losses.svg``, ``metrics.svg`` and ``report.html`` in the run folder."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    higher_is_better = dict(higher_is_better or {})
    config = run.read_config()
    baselines = run.read_baselines() or {}
    losses = run.read_log("losses")
    metrics = run.read_log("metrics")

    loss_panels = curves(losses, skip={k for r in losses for k in r if k.startswith("lr")})
    validation = bool(metrics) and all(r.get("split") == "val" for r in metrics)
    suffix = " (validation)" if validation else ""
    metric_panels = {f"{name}{suffix}": panel for name, panel in curves(metrics).items()}
    hlines = {f"{name}{suffix}": {label: float(row[name]) for label, row in baselines.items()
                                  if isinstance(row.get(name), (int, float))}
              for name in curves(metrics)}
    losses_svg = svg_charts(loss_panels)
    metrics_svg = svg_charts(metric_panels, hlines)
    atomic_write_text(run.chart("losses"), losses_svg)
    atomic_write_text(run.chart("metrics"), metrics_svg)

    model_name = str(config.get("model", "model"))
    title = f"restorekit run {run.name}"
    samples = run.sample_files()
    sample_html = "".join(
        f'<figure><img src="{html.escape(p.relative_to(run.path).as_posix())}" '
        f'alt="{html.escape(p.stem)}">'
        f"<figcaption>{html.escape(p.stem)} (rows: low | enhanced | ground truth)"
        f"</figcaption></figure>" for p in reversed(samples)) or "<p>No samples yet.</p>"
    final = metrics[-1] if metrics else None
    chosen = selection(run)
    chosen_text = selection_text(chosen)
    unvalidated = chosen is not None and not chosen.get("split")  # --val-fraction 0
    parts = [
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Model <b>{html.escape(model_name)}</b>, data: "
        f"{html.escape(str(config.get('data', '')))}</p>",
        f"<p>{html.escape(chosen_text)}</p>" if chosen_text else "",
        "<h2>Test split (final evaluation)</h2>" if chosen is not None else "",
        _final_table(run.read_final(), higher_is_better) if chosen is not None else "",
        *([] if unvalidated else [
            "<h2>Validation split (last evaluation)</h2>" if validation
            else "<h2>Final metrics</h2>",
            _metric_table(final, baselines, higher_is_better, model_name),
            "<h2>Validation curves</h2>" if validation else "<h2>Metric curves</h2>",
            metrics_svg]),
        "<h2>Loss curves</h2>", losses_svg,
        "<h2>Samples</h2>", sample_html,
        "<h2>Configuration</h2>", table(["key", "value"], _config_rows(config)),
        "</body></html>",
    ]
    atomic_write_text(run.report, "\n".join(parts) + "\n")
    return run.report
