"""``restorekit metrics``: score predictions against ground truth, matched by file stem, or
with no ground truth the no-reference metrics of the images themselves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from restorekit.api import Command, Metric, NoReferenceMetric
from restorekit.cli._common import add_metric_files, json_ready, usable_names
from restorekit.errors import DataError, UsageError, warn
from restorekit.plugins import Registry, get_registry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("gt_dir", type=Path, nargs="?", default=None,
                        help="ground truth (same file stems); without it the no-reference "
                             "metrics score PRED_DIR alone")
    parser.add_argument("--source", type=Path, default=None, metavar="DIR",
                        help="without GT_DIR: the inputs PRED_DIR was made from (same stems), "
                             "for the metrics that compare an output with its input (loe)")
    add_metric_options(parser)
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output: mean, interval and per-image values")


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    """``--metrics``, ``--lpips-weights`` and ``--niqe-params``."""
    registry = get_registry()
    full = [n for n, m in usable_names(registry, "metrics") if isinstance(m, Metric)]
    no_reference = [n for n, m in usable_names(registry, "metrics") if not isinstance(m, Metric)]
    parser.add_argument("--metrics", default=None, metavar="NAMES",
                        help=f"comma-separated metric names, bare or PLUGIN:NAME; "
                             f"full-reference: {', '.join(full)}; no-reference: "
                             f"{', '.join(no_reference)}; `restorekit plugins --details NAME` "
                             f"describes one (default: psnr, ssim, their GT-mean variants, "
                             f"ciede2000 and every other full-reference metric with ground "
                             f"truth; every no-reference metric without)")
    add_metric_files(parser)


def run(args: argparse.Namespace, registry: Registry) -> int:
    from restorekit.data import list_images, read_image
    from restorekit.evaluate import (
        Evaluation,
        choose_metrics,
        format_table,
        is_full_reference,
        score,
    )

    reference = args.gt_dir is not None
    if reference and args.source is not None:
        raise UsageError("--source goes without GT_DIR (it gives the no-reference metrics "
                         "the inputs)")
    metrics = choose_metrics(registry, args.metrics, ground_truth=reference,
                             with_source=reference or args.source is not None,
                             lpips_weights=args.lpips_weights, niqe_params=args.niqe_params)
    if reference:
        named = [m.name for m in metrics if not is_full_reference(m)]
        if named:
            raise UsageError(f"--metrics: {named[0]!r} is a no-reference metric; score the "
                             f"predictions without ground truth: restorekit metrics "
                             f"{args.pred_dir} --metrics {','.join(named)}")
    other = args.gt_dir if reference else args.source
    for folder in (args.pred_dir, other):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{folder}: not a folder")
    preds = {p.stem: p for p in list_images(args.pred_dir)}
    if not preds:
        raise DataError(f"{args.pred_dir}: folder holds no images")
    notes = []
    if other is None:
        common = sorted(preds)
        others: dict[str, Path] = {}
        skipped = [m.name for m in registry.metrics() if args.metrics is None
                   and isinstance(m, NoReferenceMetric) and m.needs_source]
        if skipped:
            notes.append(f"not scored: {', '.join(skipped)} (compares each output with its "
                         f"input: give the inputs with --source DIR)")
    else:
        others = {p.stem: p for p in list_images(other)}
        common = sorted(preds.keys() & others.keys())
        if not common:
            raise DataError(f"no file stems in common between {args.pred_dir} and {other}")
        missing = sorted(others.keys() - preds.keys())
        if missing:
            warn(f"{len(missing)} {'ground-truth' if reference else 'input'} image(s) have "
                 f"no prediction, e.g. {others[missing[0]]}")
    per_image: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for stem in common:
        pred = read_image(preds[stem])
        if reference:
            per_image[stem] = score(pred, read_image(others[stem]), metrics,
                                    what=f"{preds[stem]} against {others[stem]}",
                                    failed=failed)
        else:
            source = read_image(others[stem]) if others else None
            per_image[stem] = score(pred, None, metrics, what=str(preds[stem]), source=source,
                                    failed=failed)
    result = Evaluation(per_image, metrics, failed)
    if args.json:
        # An infinite PSNR (identical images) is null: JSON has no Infinity.
        print(json.dumps(json_ready(result.to_json()), indent=2, allow_nan=False))
    else:
        print(format_table({**result.images, "mean": result}, metrics, notes=notes))
    return 1 if result.failed else 0  # the other metrics are shown, the failure is an error


COMMAND = Command("metrics", "score predictions against ground truth by file stem, or "
                  "without ground truth by no-reference metrics", configure, run)
