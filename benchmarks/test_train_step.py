"""Benchmark: one whole Pix2PixHD training step per preset and configuration.

Run: pytest benchmarks/test_train_step.py --benchmark-only. Each round is one step as
``restorekit run --train`` takes it (``step_times.make_case``: the engine's StepContext, G then
D, each forward, backward and Adam) on a fixed, seeded batch, after enough warm-up steps
for a CUDA-graphed step to be captured. Configurations: ``CONFIGS`` (the graphed ones on CUDA
only). Presets: ``quick`` on every device, ``lol`` and ``paper`` on CUDA;
``RK_BENCH_STEP_PRESETS=quick,lol`` picks them on any device. ``extra_info`` carries the FLOPs
of one step (``benchmarks/flops.py``), from which ``benchmarks/ratios.py`` prints the
achieved TFLOP/s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import torch
from bench_common import ROUNDS, run_benchmark
from flops import count_flops
from step_times import CONFIGS, make_case, runs_on

from restorekit.engine import graphed

PRESETS = ("quick", "lol", "paper")

def presets_to_run(device: str) -> list[str]:
    """RK_BENCH_STEP_PRESETS (comma-separated) if set, else every preset on CUDA, else quick."""
    listed = os.environ.get("RK_BENCH_STEP_PRESETS", "")
    if listed.strip():
        return [name.strip() for name in listed.split(",")]
    return list(PRESETS) if device == "cuda" else ["quick"]


@contextlib.contextmanager
def engine_matmul_settings(device: str, precision: str) -> Iterator[None]:
    """TF32 tensor cores for fp32 on CUDA, as ``restorekit run`` sets them; restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("config", list(CONFIGS), ids=[c.replace(" ", "_") for c in CONFIGS])
@pytest.mark.parametrize("preset", PRESETS)
def test_train_step(benchmark, restorekit_ops, device, preset, config):
    """One training step (G then D) of the preset under the configuration."""
    if preset not in presets_to_run(device):
        pytest.skip(f"{preset} runs on CUDA (or when RK_BENCH_STEP_PRESETS lists it)")
    settings = CONFIGS[config]
    if not runs_on(config, torch.device(device)):
        pytest.skip(f"{config} does not run on {device} (CUDA graphs need CUDA; bfloat16 a "
                    "CPU that computes it natively)")
    with engine_matmul_settings(device, settings["precision"]):
        step = make_case(preset, device=torch.device(device), **settings)
        flops = count_flops(step)  # one step, also the first warm-up
        for _ in range(graphed.WARMUP_STEPS):  # the last one captures a graphed step
            step()
        run_benchmark(
            benchmark,
            step,
            device=device,
            group=f"train-step {preset} {device}",
            rounds=ROUNDS["step"],
            info={"case": "train_step", "impl": config, "mode": "fwdbwd", "shape": preset,
                  "device": device, "precision": settings["precision"], "flops": flops},
        )
