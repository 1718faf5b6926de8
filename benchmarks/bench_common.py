"""Shapes, dtypes and timing helpers shared by the restorekit.ext benchmarks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest
import torch

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "C1024_25x38": (1, 1024, 25, 38),
    "C512_50x75": (1, 512, 50, 75),
    "C256_100x150": (1, 256, 100, 150),
    "C64_200x300": (1, 64, 200, 300),
    "N4_C256_64x64": (4, 256, 64, 64),
}

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

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
    "step": int(os.environ.get("RK_BENCH_STEP_ROUNDS", "15")),
}

# Calls per round on CUDA, queued back to back with one synchronisation at the end of the
# round, so a round measures the device's throughput rather than one launch and one sync.
CUDA_CALLS_PER_ROUND = {"op": 20, "block": 5}


def make_seeded(
    shape: tuple[int, ...],
    device: str,
    seed: int = 0,
    requires_grad: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A fixed-seed random tensor (generated on CPU so every device sees the same values)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen).to(device, dtype)
    return t.requires_grad_(requires_grad)


def calls_per_round(kind: str, device: str) -> int:
    """How many calls one timed round makes (``kind``: "op" or "block")."""
    return CUDA_CALLS_PER_ROUND[kind] if device == "cuda" else 1


def captured_in_cuda_graph(fn: Callable[[], object]) -> Callable[[], None] | None:
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream): the replay runs
    its kernels with no Python or launch overhead. None when ``fn`` cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    return graph.replay


def timed(fn: Callable[[], object], device: str, calls: int = 1) -> Callable[[], None]:
    """Wrap fn so that on CUDA every ``calls``-th call waits for the device to finish."""
    if device != "cuda":
        return fn
    count = itertools.count(1)

    def run() -> None:
        fn()
        if next(count) % calls == 0:
            torch.cuda.synchronize()

    return run


def run_benchmark(
    benchmark, fn: Callable[[], object], *, device: str, group: str, rounds: int,
    info: dict, calls: int = 1,
) -> None:
    """Time fn under a group: ``rounds`` rounds of ``calls`` calls each, after one warm-up
    round; pytest-benchmark's statistics are per call."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark.pedantic(timed(fn, device, calls), rounds=rounds, iterations=calls,
                       warmup_rounds=1)
