"""``restorekit metrics``: score predictions against ground truth, matched by file stem."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from restorekit.api import Command
from restorekit.cli._common import json_ready, lookup
from restorekit.errors import DataError, UsageError, warn
from restorekit.plugins import Registry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", type=Path)
    parser.add_argument("gt_dir", type=Path)
    parser.add_argument("--metrics", default=None, metavar="NAMES",
                        help="comma-separated metric names (default: every registered metric)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, registry: Registry) -> int:
    from restorekit.data import list_images, read_image
    from restorekit.evaluate import average, default_metrics, format_table, score

    metrics = lookup(lambda names: default_metrics(registry, names), args.metrics,
                     "--metrics")
    for folder in (args.pred_dir, args.gt_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a folder")
    preds = {p.stem: p for p in list_images(args.pred_dir)}
    gts = {p.stem: p for p in list_images(args.gt_dir)}
    common = sorted(preds.keys() & gts.keys())
    if not common:
        raise DataError(f"no file stems in common between {args.pred_dir} and {args.gt_dir}")
    missing = sorted(gts.keys() - preds.keys())
    if missing:
        warn(f"{len(missing)} ground-truth image(s) have no prediction, e.g. {gts[missing[0]]}")
    per_image = {stem: score(read_image(preds[stem]), read_image(gts[stem]), metrics,
                             what=f"{preds[stem]} against {gts[stem]}")
                 for stem in common}
    mean = average(per_image.values(), metrics)
    if args.json:
        # An infinite PSNR (identical images) is null: JSON has no Infinity.
        print(json.dumps(json_ready({"mean": mean, "images": per_image,
                                     "count": len(per_image)}), indent=2, allow_nan=False))
    else:
        print(format_table({**per_image, "mean": mean}, metrics))
    return 0


COMMAND = Command("metrics", "score predictions against ground truth by file stem",
                  configure, run)
