"""What a preprocessing trial of `restorekit tune` costs against a trial without one.

Usage: python benchmarks/preprocess_cache.py [--trial-epochs 2] [--old] [--out DIR]

Runs the ablation `restorekit tune pix2pixhd --preset quick --grid-preprocess GRID
--trial-epochs N --device cpu` (one trial per pipeline, each study new) on

* folder data: a LOL-layout folder written from the embedded set (the 5 training photos,
  400-512 pixels a side, one fixed synthesized low image each, and the 2 test photos),
  GRID "none;clahe;denoise": cold (the study's first trial with a pipeline runs it once
  per training image) and warm (``STUDY/cache`` already holds the images, as for every
  later trial with that pipeline: a repeat, another seed, another worker); with ``--old``
  also without the cache (``Pipeline.cache_key`` returns None: once per training crop);
* the embedded set, GRID "none;clahe": its training crops each get a freshly synthesized
  low image, so the pipeline runs for every crop whatever the cache.

and prints each trial's seconds and its ratio to the `none` trial of the same study. The
validation images are preprocessed once per trial in every case (``Pipeline.remember``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

FOLDER_GRID = "none;clahe;denoise"
EMBEDDED_GRID = "none;clahe"


def write_folder(root: Path) -> Path:
    """A LOL-layout folder (our485: 5 pairs, eval15: 2) from the embedded set."""
    from restorekit.data import EmbeddedPairs, write_image

    for split, folder in (("train", "our485"), ("test", "eval15")):
        pairs = EmbeddedPairs(split)
        for i, name in enumerate(pairs.names):
            low, high = pairs.pair(i)
            write_image(root / folder / "low" / f"{name}.png", low)
            write_image(root / folder / "high" / f"{name}.png", high)
    return root


def study_seconds(studies: Path, name: str, data: Path | None, grid: str,
                  epochs: int) -> dict[str, float]:
    """Run one grid study; each pipeline's trial seconds."""
    import optuna

    from restorekit.cli import main

    argv = ["tune", "pix2pixhd", "--preset", "quick", "--grid-preprocess", grid,
            "--trial-epochs", str(epochs), "--device", "cpu", "--seed", "0",
            "--studies-dir", str(studies), "--study", name]
    if data is not None:
        argv += ["--data", str(data)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, name
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{studies / name / 'study.db'}")
    return {t.params["preprocess"]: float(t.user_attrs["seconds"]) for t in study.trials}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--old", action="store_true",
                        help="also folder data without the cache (slow: once per crop)")
    parser.add_argument("--out", type=Path, default=None, help="keep the studies here")
    args = parser.parse_args()
    from restorekit import ext
    from restorekit.pipeline import Pipeline

    ext.load()  # the fused extension is built (or loaded) before the first timed trial
    out = args.out or Path(tempfile.mkdtemp(prefix="rk-preprocess-cache-"))
    studies = out / "studies"
    data = write_folder(out / "data")
    cases = [("folder", "once per image, cold cache", "cold", data, FOLDER_GRID),
             ("folder", "once per image, warm cache", "warm", data, FOLDER_GRID),
             ("embedded", "every crop (fresh lows)", "embedded", None, EMBEDDED_GRID)]
    if args.old:
        cases.append(("folder", "every crop (old, no cache)", "old", data, FOLDER_GRID))
    cache_key = Pipeline.cache_key
    rows = []
    started = time.monotonic()
    for label, runs, name, folder, grid in cases:
        if name == "warm":  # a later trial with the same pipeline
            shutil.copytree(studies / "cold" / "cache", studies / "warm" / "cache")
        if name == "old":
            Pipeline.cache_key = lambda self: None  # type: ignore[method-assign]
        try:
            seconds = study_seconds(studies, name, folder, grid, args.trial_epochs)
        finally:
            Pipeline.cache_key = cache_key  # type: ignore[method-assign]
        print(f"{name}: {seconds}", file=sys.stderr)
        rows += [(label, runs, spec, seconds[spec], seconds[spec] / seconds["none"])
                 for spec in grid.split(";")]
    print(f"{args.trial_epochs} epochs of the quick preset per trial, "
          f"{time.monotonic() - started:.0f} s in all; studies in {out}\n")
    print("| data | the pipeline runs | pipeline | trial seconds | x the `none` trial |")
    print("| --- | --- | --- | --- | --- |")
    for label, runs, spec, secs, ratio in rows:
        print(f"| {label} | {runs} | {spec} | {secs:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
