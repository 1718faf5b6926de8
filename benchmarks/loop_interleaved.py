"""Per-step time of the engine's training loop, this checkout against an older one, interleaved.

``benchmarks/step_times.py`` times ``train_step`` alone; this times what the loop does per
batch (waiting for the batch, the step, the loss bookkeeping, logging) by running
:func:`restorekit.engine.train` on the embedded set and timing the intervals between
consecutive ``train_step`` calls. The older side is the whole checkout at ``--against`` (a
temporary ``git worktree``, removed at the end). Each round runs this script once per
checkout, in a subprocess whose ``PYTHONPATH`` is that checkout, old and new alternating
round by round so that load on a shared machine hits both alike. Prints the median
milliseconds per step of each (the first two intervals of a round, warm-up, left out), the
range of those intervals and the ratio of the medians.

Usage: python benchmarks/loop_interleaved.py --against COMMIT [--preset quick]
       [--steps 12] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from restorekit import engine
from restorekit.data import open_pairs
from restorekit.engine import allocator
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry
from restorekit_pix2pixhd.model import Pix2PixHD

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2  # intervals left out at the start of each round


def one_round(preset: str, steps: int, device: str) -> list[float]:
    """Seconds between consecutive ``train_step`` calls of one ``train`` of ``steps`` steps,
    with the ``restorekit`` this process imports."""
    allocator.keep_freed_memory()  # as `restorekit run` does
    pairs = open_pairs(None, "train")
    for i in range(len(pairs)):  # the photos are read before timing, not in a timed step
        pairs.crop(i, 8, np.random.default_rng(0))
    times: list[float] = []

    class Timed(Pix2PixHD):
        def train_step(self, low, high, ctx):  # noqa: ANN001, ANN202
            times.append(time.perf_counter())
            return super().train_step(low, high, ctx)

    options = Pix2PixHD.make_options(preset, device=device, max_steps=steps, eval_every=0)
    registry = Registry()
    registry.items["models"]["pix2pixhd"] = Timed
    with tempfile.TemporaryDirectory() as tmp:
        engine.train(Timed(options, Pipeline()), train_pairs=pairs, test_pairs=None,
                     run_dir=Path(tmp) / "run", registry=registry, metrics=[])
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def run_round(checkout: Path, args: argparse.Namespace) -> list[float]:
    """The intervals of :func:`one_round` run in a subprocess on ``checkout``'s code,
    warm-up left out."""
    path = os.pathsep.join([str(checkout), str(checkout / "plugins" / "pix2pixhd")])
    done = subprocess.run(
        [sys.executable, __file__, "--round", "--against", args.against,
         "--preset", args.preset, "--steps", str(args.steps), "--device", args.device],
        env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"a round on {checkout} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the older commit")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round:  # a subprocess of the parent below: one round, its intervals as JSON
        print(json.dumps(one_round(args.preset, args.steps, args.device)))
        return
    times: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against],
                               cwd=ROOT, capture_output=True, text=True)
        if added.returncode:
            sys.exit(f"--against {args.against}: {added.stderr.strip()}")
        try:
            checkouts = {"old": old, "new": ROOT}
            for r in range(args.rounds):
                for name in list(checkouts)[:: 1 if r % 2 == 0 else -1]:
                    times[name] += run_round(checkouts[name], args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           check=True)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} thread(s)")
    print(f"# `{args.preset}` loop steps on {where}, torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.steps} steps, old = {args.against}, "
          f"new = this checkout")
    medians = {}
    for name, t in times.items():
        ms = [s * 1e3 for s in t]
        medians[name] = statistics.median(ms)
        print(f"{name}: median {medians[name]:.1f} ms/step (range {min(ms):.1f}-"
              f"{max(ms):.1f}, {len(ms)} steps)")
    print(f"new/old: {medians['new'] / medians['old']:.3f}")


if __name__ == "__main__":
    main()
