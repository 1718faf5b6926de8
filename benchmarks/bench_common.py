"""Shapes and timing helpers shared by the restorekit.ext benchmarks."""

from __future__ import annotations

import os

import pytest
import torch

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "C1024_25x38": (1, 1024, 25, 38),
    "C512_50x75": (1, 512, 50, 75),
    "C256_100x150": (1, 256, 100, 150),
    "C64_200x300": (1, 64, 200, 300),
    "N4_C256_64x64": (4, 256, 64, 64),
}

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]

# Rounds per benchmark: whole blocks cost ~0.2-1.5 s per forward+backward on a 2-core CPU.
ROUNDS = {
    "op": int(os.environ.get("RK_BENCH_OP_ROUNDS", "15")),
    "block": int(os.environ.get("RK_BENCH_BLOCK_ROUNDS", "8")),
}


def make_seeded(shape, device, seed=0, requires_grad=False):
    """A fixed-seed random tensor (generated on CPU so every device sees the same values)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen).to(device)
    return t.requires_grad_(requires_grad)


def timed(fn, device):
    """Wrap fn so CUDA work is finished inside the timed call."""
    if device == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()

        return run
    return fn


def run_benchmark(benchmark, fn, *, device, group, rounds, info):
    """Time fn with pedantic rounds (after one warm-up round) under a per-shape group."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark.pedantic(timed(fn, device), rounds=rounds, iterations=1, warmup_rounds=1)
