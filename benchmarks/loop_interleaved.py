"""Per-step time of the engine's training loop, this checkout against an older one, interleaved.

``benchmarks/step_times.py`` times ``train_step`` alone; this times what the loop does per
batch (waiting for the batch, the step, the loss bookkeeping, logging) by running
:func:`restorekit.engine.train` on the embedded set and timing the intervals between
consecutive ``train_step`` calls. The older loop is ``restorekit/engine/trainer.py`` as of
``--against`` (read with ``git show``; the rest of the engine is this checkout's), and the
two alternate round by round in one process, so load on a shared machine hits both alike.
Prints the median milliseconds per step of each (the first two intervals of a round, warm-up,
left out), all intervals' range, the main thread's CPU time per step (what the loop itself
costs, less sensitive to other processes' load) and the ratio of the medians.

Usage: python benchmarks/loop_interleaved.py --against COMMIT [--preset quick]
       [--steps 12] [--rounds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from restorekit import engine
from restorekit.data import open_pairs
from restorekit.engine import allocator
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry
from restorekit_pix2pixhd.model import Pix2PixHD


def old_trainer(commit: str) -> ModuleType:
    """``restorekit.engine.trainer`` as it was at ``commit``, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:restorekit/engine/trainer.py"],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("old_trainer", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    exec(compile(source, f"{commit[:8]}:trainer.py", "exec"), module.__dict__)
    return module


def intervals(train: object, pairs: object, preset: str, steps: int, device: str,
              run_dir: Path) -> list[tuple[float, float]]:
    """(wall, main thread's CPU) seconds between consecutive ``train_step`` calls of one
    ``train`` of ``steps`` steps."""
    times: list[tuple[float, float]] = []

    class Timed(Pix2PixHD):
        def train_step(self, low, high, ctx):  # noqa: ANN001, ANN202
            times.append((time.perf_counter(), time.thread_time()))
            return super().train_step(low, high, ctx)

    options = Pix2PixHD.make_options(preset, device=device, max_steps=steps, eval_every=0)
    registry = Registry()
    registry.items["models"]["pix2pixhd"] = Timed
    train(Timed(options, Pipeline()), train_pairs=pairs, test_pairs=None,  # type: ignore[operator]
          run_dir=run_dir, registry=registry, metrics=[])
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(times[2:], times[3:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit of the older loop")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    allocator.keep_freed_memory()  # as `restorekit run` does
    loops = {"old": old_trainer(args.against).train, "new": engine.train}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    pairs = open_pairs(None, "train")
    for i in range(len(pairs)):  # the photos are read once per process: not in a timed step
        pairs.crop(i, 8, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in list(loops)[:: 1 if r % 2 == 0 else -1]:
                times[name] += intervals(loops[name], pairs, args.preset, args.steps,
                                         args.device, Path(tmp) / f"{name}{r}")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} thread(s)")
    print(f"# `{args.preset}` loop steps on {where}, torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.steps} steps, old = {args.against[:8]}")
    medians = {}
    for name, t in times.items():
        wall, cpu = [w * 1e3 for w, _ in t], [c * 1e3 for _, c in t]
        medians[name] = statistics.median(wall)
        print(f"{name}: median {medians[name]:.1f} ms/step (range {min(wall):.1f}-"
              f"{max(wall):.1f}, {len(t)} steps); main thread's CPU time "
              f"{statistics.median(cpu):.1f} ms/step")
    print(f"new/old: {medians['new'] / medians['old']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
