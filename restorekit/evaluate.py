"""Evaluating an enhancement function on paired data with the registered metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from restorekit.api import Metric
from restorekit.errors import DataError
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry
from restorekit.types import Image

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


def default_metrics(registry: Registry, names: str | None = None) -> list[Metric]:
    """Metrics for tables: PSNR, SSIM, CIEDE2000, then every other registered metric.

    ``names`` (comma-separated, e.g. from ``--metrics``) picks exactly those instead.
    """
    if names:
        return registry.metrics(names)
    usable = [m.name for m in registry.metrics()]
    ordered = [n for n in DEFAULT_METRICS if n in usable]
    ordered += [n for n in usable if n not in DEFAULT_METRICS]
    return [registry.metric(n) for n in ordered]


def score(prediction: Image, target: Image, metrics: Sequence[Metric],
          what: str = "") -> dict[str, float]:
    """Every metric of one prediction against its target (same size, else ``DataError``)."""
    if prediction.shape != target.shape:
        raise DataError(f"{what}: prediction is {prediction.shape[1]}x{prediction.shape[0]}, "
                        f"ground truth {target.shape[1]}x{target.shape[0]}")
    side = min(target.shape[:2])
    for m in metrics:
        if side < m.min_size:
            raise DataError(f"{what}: image is {target.shape[0]}x{target.shape[1]} (HxW), "
                            f"smaller than the {m.min_size}x{m.min_size} metric {m.name!r} "
                            f"needs")
    try:
        return {m.name: m.score(prediction, target) for m in metrics}
    except ValueError as exc:
        raise DataError(f"{what}: {exc}") from None


def average(rows: Iterable[Mapping[str, float]], metrics: Sequence[Metric]) -> dict[str, float]:
    """The mean of each metric over per-image rows."""
    rows = list(rows)
    return {m.name: float(np.mean([r[m.name] for r in rows])) for m in metrics}


def evaluate(pairs: Any, enhance: Callable[[Image], Image] | None,
             metrics: Sequence[Metric], *, desc: str = "evaluating",
             progress: bool = True,
             on_output: Callable[[int, Image, Image, Image], None] | None = None,
             ) -> dict[str, float]:
    """Mean of every metric over ``pairs``; ``enhance=None`` scores the input itself.

    ``on_output(i, low, output, high)`` sees each pair's output (e.g. to keep the first few
    for sample images without enhancing them twice).
    """
    rows = []
    for i in tqdm(range(len(pairs)), desc=desc, unit="img", leave=False,
                  disable=not progress):
        low, high = pairs.pair(i)
        label = pairs.label(i) if hasattr(pairs, "label") else pairs.names[i]
        try:
            out = low if enhance is None else enhance(low)
        except ValueError as exc:  # e.g. an image too small for the model
            raise DataError(f"{label}: {exc}") from None
        rows.append(score(out, high, metrics, what=str(label)))
        if on_output is not None:
            on_output(i, low, out, high)
    return average(rows, metrics)


def classic_baselines(pairs: Any, metrics: Sequence[Metric], registry: Registry,
                      candidates: Sequence[str] = CLASSIC_CANDIDATES,
                      progress: bool = True) -> dict[str, dict[str, float]]:
    """Rows ``identity`` and the best classic pipeline by the first metric."""
    rows = {"identity": evaluate(pairs, None, metrics, desc="identity", progress=progress)}
    first = metrics[0]
    best_name, best_row = "", None
    for spec in candidates:
        row = evaluate(pairs, Pipeline.parse(spec, registry), metrics, desc=f"classic {spec}",
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
