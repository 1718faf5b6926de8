"""Evaluating an enhancement function on paired data with the registered metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from restorekit.api import Image, Metric

DEFAULT_METRICS = ("psnr", "ssim", "ciede2000")
CLASSIC_CANDIDATES = (
    "gamma",
    "autogamma",
    "autogamma,denoise",
    "clahe",
    "autogamma,clahe,denoise",
    "histeq,denoise",
)
"""Preprocessor pipelines tried for the best-``classic`` baseline."""


def default_metrics(names: Sequence[str] = DEFAULT_METRICS) -> list[Metric]:
    """The named metrics from the plugin registry (PSNR, SSIM, CIEDE2000 by default)."""
    from restorekit.plugins import get_registry

    registry = get_registry()
    return [registry.metric(name) for name in names]


def evaluate(pairs: Any, enhance: Callable[[Image], Image] | None,
             metrics: Sequence[Metric], *, desc: str = "evaluating",
             progress: bool = True) -> dict[str, float]:
    """Mean of every metric over ``pairs``; ``enhance=None`` scores the input itself."""
    scores: dict[str, list[float]] = {m.name: [] for m in metrics}
    for i in tqdm(range(len(pairs)), desc=desc, unit="img", leave=False,
                  disable=not progress):
        low, high = pairs.pair(i)
        out = low if enhance is None else enhance(low)
        if out.shape != high.shape:
            raise ValueError(f"{pairs.names[i]}: enhanced image is {out.shape[1]}x"
                             f"{out.shape[0]}, ground truth {high.shape[1]}x{high.shape[0]}")
        for m in metrics:
            scores[m.name].append(float(m.fn(out, high)))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def classic_baselines(pairs: Any, metrics: Sequence[Metric],
                      candidates: Sequence[str] = CLASSIC_CANDIDATES,
                      progress: bool = True) -> dict[str, dict[str, float]]:
    """Rows ``identity`` and the best classic pipeline by the first metric."""
    from restorekit.pipeline import Pipeline

    rows = {"identity": evaluate(pairs, None, metrics, desc="identity", progress=progress)}
    first = metrics[0]
    best_name, best_row = "", None
    for spec in candidates:
        row = evaluate(pairs, Pipeline.parse(spec), metrics, desc=f"classic {spec}",
                       progress=progress)
        if best_row is None or _better(first, row[first.name], best_row[first.name]):
            best_name, best_row = spec, row
    if best_row is not None:
        rows[f"classic ({best_name})"] = best_row
    return rows


def _better(metric: Metric, a: float, b: float) -> bool:
    return a > b if metric.higher_is_better else a < b


def format_table(rows: dict[str, dict[str, float]], metrics: Sequence[Metric]) -> str:
    """A plain-text table: one row per method, one column per metric (with its direction)."""
    headers = ["method"] + [f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in metrics]
    body = [[name] + [f"{row[m.name]:.4f}" for m in metrics] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])
