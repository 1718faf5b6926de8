"""Evaluating an enhancement function with the registered metrics: per image, the mean
and its 95 % bootstrap interval.

Full-reference metrics score a prediction against its ground truth; no-reference ones
(:class:`restorekit.api.NoReferenceMetric`) score the prediction alone, with its input
where the metric needs it (the lightness-order error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from restorekit.api import AnyMetric, Metric, NoReferenceMetric
from restorekit.errors import DataError, PluginError, UsageError, warn
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry
from restorekit.types import Image

DEFAULT_METRICS = ("psnr", "ssim", "psnr_gtmean", "ssim_gtmean", "ciede2000")
"""The first columns of a table: PSNR and SSIM plain, then under the GT-mean protocol."""
GT_MEAN_NOTE = ("psnr, ssim: plain protocol; psnr_gtmean, ssim_gtmean: GT-mean protocol "
                "(output scaled to the ground truth's mean grey level first, as KinD, LLFlow "
                "and HVI-CIDNet's --use_GT_mean)")
FILE_METRICS = {"lpips": "--lpips-weights", "niqe": "--niqe-params"}
"""Metrics built from a local file given with an option, not registered."""
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CLASSIC_CANDIDATES = (
    "gamma",
    "autogamma",
    "autogamma,denoise",
    "clahe",
    "autogamma,clahe,denoise",
    "histeq,denoise",
)
"""Preprocessor pipelines tried for the best-``classic`` baseline."""


def is_full_reference(metric: AnyMetric) -> bool:
    """True for a metric scored against a ground truth."""
    return isinstance(metric, Metric)


def default_metrics(registry: Registry, names: str | None = None) -> list[AnyMetric]:
    """Metrics for tables against ground truth: :data:`DEFAULT_METRICS`, then every other
    registered full-reference metric.

    ``names`` (comma-separated, e.g. from ``--metrics``) picks exactly those instead (a
    no-reference one among them scores the prediction alone).
    """
    if names:
        return registry.metrics(names)
    usable = [m.name for m in registry.metrics() if is_full_reference(m)]
    ordered = [n for n in DEFAULT_METRICS if n in usable]
    ordered += [n for n in usable if n not in DEFAULT_METRICS]
    return [registry.metric(n) for n in ordered]


def choose_metrics(registry: Registry, names: str | None, *, ground_truth: bool,
                   with_source: bool = True, lpips_weights: Path | None = None,
                   niqe_params: Path | None = None) -> list[AnyMetric]:
    """The metrics of a table, for images with or without ``ground_truth``.

    ``names`` picks them (``--metrics``); by default :func:`default_metrics` with ground
    truth, every no-reference metric without (those that compare with the input only
    ``with_source``). ``lpips_weights`` adds ``lpips``, ``niqe_params`` adds ``niqe``, built
    from those local files. A full-reference metric without ground truth, one that needs the
    input without it, or ``lpips``/``niqe`` named without its file is a ``UsageError``.
    """
    from restorekit.builtin.noreference import niqe_metric

    built: dict[str, AnyMetric] = {}
    if lpips_weights is not None:
        from restorekit.builtin.lpips import lpips_metric  # torch: only when asked

        built["lpips"] = _from_file("lpips", lpips_metric, lpips_weights)
    if niqe_params is not None:
        built["niqe"] = _from_file("niqe", niqe_metric, niqe_params)
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    for name in wanted:
        if name in FILE_METRICS and name not in built:
            raise UsageError(f"--metrics: {name!r} needs {FILE_METRICS[name]} FILE (nothing "
                             f"is downloaded; see docs/metrics.md)")
    try:
        if wanted:
            chosen = [built.get(n) or registry.metric(n) for n in wanted]
        elif ground_truth:
            chosen = default_metrics(registry) + list(built.values())
        else:
            chosen = [m for m in registry.metrics() if not is_full_reference(m)
                      and (with_source or not m.needs_source)] + list(built.values())
    except PluginError as exc:  # an unknown or contested name
        raise UsageError(f"--metrics: {exc}") from None
    for m in chosen:
        if not ground_truth and is_full_reference(m):
            option = "--lpips-weights" if m.name == "lpips" else "--metrics"
            raise UsageError(f"{option}: {m.name!r} is a full-reference metric; it needs "
                             f"ground truth, which these images do not have")
        if isinstance(m, NoReferenceMetric) and m.needs_source and not with_source:
            raise UsageError(f"--metrics: {m.name!r} compares each output with its input; "
                             f"give the inputs (--source DIR)")
    return chosen


def _from_file(name: str, make: Callable[[Path], AnyMetric], path: Path) -> AnyMetric:
    """``make(path)``; a bad file is a ``UsageError`` naming the option and the file."""
    try:
        return make(path)
    except DataError as exc:
        raise UsageError(f"{FILE_METRICS[name]}: {exc}") from None


def score(prediction: Image, target: Image | None, metrics: Sequence[AnyMetric],
          what: str = "", source: Image | None = None,
          failed: dict[str, str] | None = None) -> dict[str, float]:
    """Every metric of one prediction: a full-reference one against ``target`` (same size,
    else ``DataError``), a no-reference one alone or with ``source``, its input.

    A metric that crashes or returns what is not a float (a ``PluginError`` naming it and
    its plugin) is left out, with one warning line; its reason joins ``failed`` (metric
    name -> line), and a metric already there is not scored again (its column stays
    empty: see :class:`Evaluation`).
    """
    for other, name in ((target, "ground truth"), (source, "input")):
        if other is not None and prediction.shape != other.shape:
            raise DataError(f"{what}: prediction is {prediction.shape[1]}x"
                            f"{prediction.shape[0]}, {name} {other.shape[1]}x{other.shape[0]}")
    side = min(prediction.shape[:2])
    for m in metrics:
        if side < m.min_size:
            raise DataError(f"{what}: image is {prediction.shape[0]}x{prediction.shape[1]} "
                            f"(HxW), smaller than the {m.min_size}x{m.min_size} metric "
                            f"{m.name!r} needs")
    failed = {} if failed is None else failed
    values = {}
    for m in metrics:
        if m.name in failed:
            continue
        try:
            values[m.name] = m.score(prediction, target) if is_full_reference(m) \
                else m.score(prediction, source)
        except ValueError as exc:
            raise DataError(f"{what}: {exc}") from None
        except PluginError as exc:
            failed[m.name] = f"{exc}, scoring {what}" if what else str(exc)
            # Once per metric and process: the validation and the test split name other images.
            warn(f"{failed[m.name]}; its column is left empty", once=True,
                 key=f"metric failed: {m.name}")
    return values


def bootstrap_interval(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """The 95 % percentile-bootstrap interval of the mean of ``values`` (images resampled
    with replacement, seeded); None when a value is not finite (an infinite PSNR) and for a
    single image (resampling one value gives a zero-width interval: no spread measured,
    not no spread)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2 or not np.all(np.isfinite(data)):
        return None
    picks = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    low, high = np.percentile(data[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


class Evaluation(dict):
    """The mean of each metric over a set of images (a plain ``{name: mean}`` dict, what
    every caller stores), with the spread: ``images`` (image label -> metric -> value) and
    ``intervals`` (metric -> 95 % bootstrap interval of the mean, or None).

    A metric that failed on any image (``failed``: name -> reason, from :func:`score`; or
    missing from an image's row) is empty for the whole evaluation: it is left out of the
    means, intervals and image rows, never a NaN, and ``failed`` says why.
    """

    def __init__(self, images: Mapping[str, Mapping[str, float]],
                 metrics: Sequence[AnyMetric], failed: Mapping[str, str] | None = None) -> None:
        reasons = dict(failed or {})
        for m in metrics:
            if m.name not in reasons and any(m.name not in row for row in images.values()):
                reasons[m.name] = f"metric {m.name!r} was not scored on every image"
        self.failed = {m.name: reasons[m.name] for m in metrics if m.name in reasons}
        names = [m.name for m in metrics if m.name not in self.failed]
        super().__init__({n: float(np.mean([row[n] for row in images.values()]))
                          for n in names})
        self.images = {label: {n: float(row[n]) for n in names}
                       for label, row in images.items()}
        self.intervals = {n: bootstrap_interval([row[n] for row in self.images.values()])
                          for n in names}

    def to_json(self) -> dict[str, Any]:
        """``{"mean", "interval", "count", "images"}`` (non-finite values still floats),
        and ``"failed"`` (metric -> reason) when a metric is empty."""
        return {"mean": dict(self), "interval": {n: None if iv is None else list(iv)
                                                 for n, iv in self.intervals.items()},
                "count": len(self.images), "images": self.images,
                **({"failed": self.failed} if self.failed else {})}

    def record(self) -> dict[str, Any]:
        """The means, their ``"intervals"`` (metric -> ``[low, high]`` or None) and the
        per-image values (``"images"``: image label -> metric -> value): a run folder's
        ``metrics.jsonl`` record and ``baselines.json`` row, a tuning trial's ``val``, which
        :func:`format_table` shows as it shows this evaluation."""
        return {**self, "intervals": self.to_json()["interval"], "images": self.images}


def evaluate(pairs: Any, enhance: Callable[[Image], Image] | None,
             metrics: Sequence[AnyMetric], *, desc: str = "evaluating",
             progress: bool = True,
             on_output: Callable[[int, Image, Image, Image], None] | None = None,
             ) -> Evaluation:
    """Every metric of every pair, summarised; ``enhance=None`` scores the input itself.
    A no-reference metric scores the output alone, with the low-light input as its
    source.

    ``on_output(i, low, output, high)`` sees each pair's output (e.g. to keep the first few
    for sample images without enhancing them twice).
    """
    rows, failed = {}, {}
    for i in tqdm(range(len(pairs)), desc=desc, unit="img", leave=False,
                  disable=not progress):
        low, high = pairs.pair(i)
        label = str(pairs.label(i) if hasattr(pairs, "label") else pairs.names[i])
        try:
            out = low if enhance is None else enhance(low)
        except ValueError as exc:  # e.g. an image too small for the model
            raise DataError(f"{label}: {exc}") from None
        rows[label] = score(out, high, metrics, what=label, source=low, failed=failed)
        if on_output is not None:
            on_output(i, low, out, high)
    return Evaluation(rows, metrics, failed)


def classic_baselines(pairs: Any, metrics: Sequence[AnyMetric], registry: Registry,
                      candidates: Sequence[str] = CLASSIC_CANDIDATES,
                      progress: bool = True) -> dict[str, Evaluation]:
    """Rows ``identity`` and the best classic pipeline by the first metric."""
    rows = {"identity": evaluate(pairs, None, metrics, desc="identity", progress=progress)}
    first = metrics[0]
    best_name, best_row = "", None
    for spec in candidates:
        row = evaluate(pairs, Pipeline.parse(spec, registry), metrics, desc=f"classic {spec}",
                       progress=progress)
        if best_row is None or _better(first, row.get(first.name), best_row.get(first.name)):
            best_name, best_row = spec, row
    if best_row is not None:
        rows[f"classic ({best_name})"] = best_row
    return rows


def _better(metric: AnyMetric, a: float | None, b: float | None) -> bool:
    """Whether ``a`` beats ``b`` (an empty value beats nothing, anything beats it)."""
    if a is None or b is None:
        return b is None and a is not None
    return a > b if metric.higher_is_better else a < b


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[AnyMetric],
                 notes: Sequence[str] = ()) -> str:
    """A plain-text table: one row per method, one column per metric (with its direction);
    a row that is an :class:`Evaluation` (or its :meth:`~Evaluation.record`) shows its 95 %
    interval, ``mean [low, high]``.

    Lines under the table say what the interval is, which columns follow the GT-mean
    protocol, and any ``notes``.
    """
    headers = ["method"] + [f"{m.name} {_arrow(m)}".rstrip() for m in metrics]
    body = [[name] + [_cell(row, m.name) for m in metrics] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    below = []
    counts = sorted({len(r.images) for r in rows.values() if isinstance(r, Evaluation)})
    if counts or any(_interval(r, m.name) for r in rows.values() for m in metrics):
        over = " or ".join(str(c) for c in counts) + " " if counts else ""
        below.append(f"[low, high]: 95 % bootstrap interval of the mean over the {over}"
                     f"images ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; none "
                     f"for a single image)")
    if any(m.name in ("psnr_gtmean", "ssim_gtmean") for m in metrics):
        below.append(GT_MEAN_NOTE)
    if any(m.name not in row for row in rows.values() for m in metrics):
        below.append("an empty cell: the metric failed or returned no valid value on some "
                     "image (the warning above says why)")
    below += notes
    return "\n".join([line(headers), rule, *(line(r) for r in body), *below])


def _arrow(metric: AnyMetric) -> str:
    if metric.higher_is_better is None:
        return ""
    return "↑" if metric.higher_is_better else "↓"


def _interval(row: Mapping[str, Any], name: str) -> Sequence[float] | None:
    """The interval of ``name`` in an :class:`Evaluation` or its record, if any."""
    if isinstance(row, Evaluation):
        return row.intervals.get(name)
    return (row.get("intervals") or {}).get(name)


def _cell(row: Mapping[str, float], name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    interval = _interval(row, name)
    if interval is None or not math.isfinite(value):
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"
