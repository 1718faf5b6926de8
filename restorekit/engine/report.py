"""A run's ``report.html`` and its ``losses.svg``/``metrics.svg`` curves, drawn by hand.

Everything is read back from the run folder through :class:`RunDir` (config, losses,
metrics, baselines, samples), so a report can be rebuilt for any run folder with
:func:`write_report`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restorekit.engine.files import atomic_write_text
from restorekit.engine.rundir import RunDir

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
PANEL_W, PANEL_H = 380, 230
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 26, 34
# Keys of a losses.jsonl / metrics.jsonl line that are not curves.
NOT_CURVES = {"epoch", "step", "time"}

Series = dict[str, list[tuple[float, float]]]


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _panel(title: str, series: Series, hlines: Mapping[str, float], x0: int, y0: int,
           xlabel: str) -> list[str]:
    """SVG elements of one chart panel whose top-left corner is at (x0, y0)."""
    out = [f'<g transform="translate({x0},{y0})">',
           f'<text x="{PANEL_W / 2}" y="16" text-anchor="middle" font-weight="bold">'
           f'{html.escape(title)}</text>']
    points = [(x, y) for pts in series.values() for x, y in pts
              if math.isfinite(x) and math.isfinite(y)]
    ys = [y for _, y in points] + [v for v in hlines.values() if math.isfinite(v)]
    if not points:
        out.append(f'<text x="{PANEL_W / 2}" y="{PANEL_H / 2}" text-anchor="middle" '
                   f'fill="#888">no data yet</text></g>')
        return out
    xmin, xmax = min(x for x, _ in points), max(x for x, _ in points)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    if ymax == ymin:
        pad = abs(ymin) * 0.05 or 1.0
        ymin, ymax = ymin - pad, ymax + pad
    pw, ph = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - xmin) / (xmax - xmin) * pw

    def sy(y: float) -> float:
        return TOP + (ymax - y) / (ymax - ymin) * ph

    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#999"/>')
    for value, anchor_y in ((ymax, TOP + 4), (ymin, TOP + ph)):
        out.append(f'<text x="{LEFT - 4}" y="{anchor_y}" text-anchor="end" '
                   f'font-size="10">{_fmt(value)}</text>')
    out.append(f'<text x="{LEFT}" y="{TOP + ph + 14}" font-size="10">{_fmt(xmin)}</text>')
    out.append(f'<text x="{LEFT + pw}" y="{TOP + ph + 14}" text-anchor="end" '
               f'font-size="10">{_fmt(xmax)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{TOP + ph + 26}" text-anchor="middle" '
               f'font-size="10">{html.escape(xlabel)}</text>')
    legend = []
    for i, (label, value) in enumerate(sorted(hlines.items())):
        if not math.isfinite(value):
            continue
        color = "#777" if i % 2 == 0 else "#bbb"
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(value):.1f}" '
                   f'y2="{sy(value):.1f}" stroke="{color}" stroke-dasharray="5,4"/>')
        legend.append((f"{label} {_fmt(value)}", color))
    for i, (label, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts
                          if math.isfinite(x) and math.isfinite(y))
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        else:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                       f'points="{coords}"/>')
        if len(series) > 1:
            legend.append((label, color))
    for i, (label, color) in enumerate(legend):
        out.append(f'<text x="{LEFT + pw - 4}" y="{TOP + 12 + 12 * i}" text-anchor="end" '
                   f'font-size="10" fill="{color}">{html.escape(label)}</text>')
    out.append("</g>")
    return out


def svg_charts(panels: Mapping[str, Series], hlines: Mapping[str, Mapping[str, float]]
               | None = None, xlabel: str = "step", columns: int = 2) -> str:
    """An SVG document with one line chart per panel (``title -> {label: [(x, y)]}``)."""
    hlines = hlines or {}
    names = list(panels) or ["(none)"]
    cols = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / cols)
    width, height = cols * PANEL_W, rows * PANEL_H
    body: list[str] = []
    for i, name in enumerate(names):
        body += _panel(name, panels.get(name, {}), hlines.get(name, {}),
                       (i % cols) * PANEL_W, (i // cols) * PANEL_H, xlabel)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


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


def _metric_table(final: Mapping[str, Any] | None, baselines: Mapping[str, Mapping[str, float]],
                  higher_is_better: Mapping[str, bool], model_name: str) -> str:
    names = [n for n in higher_is_better] or sorted(
        {k for row in baselines.values() for k in row}
        | {k for k in (final or {}) if k not in NOT_CURVES})
    header = ["", *(f"{n} {'↑' if higher_is_better.get(n, True) else '↓'}"
                    if n in higher_is_better else n for n in names)]
    rows = []
    if final:
        label = f"{model_name} (epoch {final.get('epoch')}, step {final.get('step')})"
        rows.append([label, *(_number(final.get(n)) for n in names)])
    for label, values in baselines.items():
        rows.append([label, *(_number(values.get(n)) for n in names)])
    return table(header, rows) if rows else "<p>No evaluation yet.</p>"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def write_report(run: RunDir | str | Path,
                 higher_is_better: Mapping[str, bool] | None = None) -> Path:
    """Write ``losses.svg``, ``metrics.svg`` and ``report.html`` in the run folder."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    higher_is_better = dict(higher_is_better or {})
    config = run.read_config()
    baselines = run.read_baselines() or {}
    losses = run.read_log("losses")
    metrics = run.read_log("metrics")

    loss_panels = curves(losses, skip={k for r in losses for k in r if k.startswith("lr")})
    metric_panels = curves(metrics)
    hlines = {name: {label: float(row[name]) for label, row in baselines.items()
                     if isinstance(row.get(name), (int, float))}
              for name in metric_panels}
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
        "<h2>Final metrics</h2>",
        _metric_table(final, baselines, higher_is_better, model_name),
        "<h2>Metric curves</h2>", metrics_svg,
        "<h2>Loss curves</h2>", losses_svg,
        "<h2>Samples</h2>", sample_html,
        "<h2>Configuration</h2>", table(["key", "value"], _config_rows(config)),
        "</body></html>",
    ]
    atomic_write_text(run.report, "\n".join(parts) + "\n")
    return run.report
