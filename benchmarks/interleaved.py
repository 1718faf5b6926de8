"""Interleaved timing of the fused ResnetBlock on a shared, noisy machine.

pytest-benchmark times each case in one stretch, so load from other processes can land on
one case and not another. This script alternates floor / fused / eager (forward+backward)
and fused / eager op 1 within every iteration and reports the median of the per-iteration
ratios, so the ratios compare like with like. Like the pytest suite, it runs with the
allocator setting of ``restorekit run`` (``RESTOREKIT_MALLOC=system`` for glibc's defaults).
Usage: python benchmarks/interleaved.py [ITERATIONS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import SHAPES  # noqa: E402
from test_resnet_block import _eager_op1  # noqa: E402

import restorekit.ext as ext  # noqa: E402
from restorekit.engine import allocator  # noqa: E402
from restorekit_pix2pixhd.networks import ResnetBlock  # noqa: E402


def _cases(shape: tuple[int, int, int, int]) -> dict:
    ops = torch.ops.restorekit
    torch.manual_seed(0)
    block = ResnetBlock(shape[1])
    c1, c2 = block.conv_block[1], block.conv_block[5]
    params = list(block.parameters())
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    gp = torch.randn(shape[0], shape[1], shape[2] + 2, shape[3] + 2)
    xp = F.pad(x.detach(), (1, 1, 1, 1), mode="reflect").requires_grad_(True)
    hp = torch.randn(xp.shape, requires_grad=True)

    def floor() -> None:
        y1 = F.conv2d(xp, c1.weight, c1.bias)
        y2 = F.conv2d(hp, c2.weight, c2.bias)
        torch.autograd.grad((y1, y2), (xp, hp, *params), (g, g))

    return {
        "floor": floor,
        "fused": lambda: torch.autograd.grad(ext.resnet_block(x, c1, c2), (x, *params), g),
        "eager": lambda: torch.autograd.grad(block(x), (x, *params), g),
        "op1_fused": lambda: torch.autograd.grad(ops.instance_norm_act(x, 1e-5, 0.0, 1), x, gp),
        "op1_eager": lambda: torch.autograd.grad(_eager_op1(x), x, gp),
    }


def _time(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over iterations of num_i / den_i (cases timed side by side in iteration i)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def main() -> None:
    """Print a markdown table of forward+backward times and ratios per shape.

    Each iteration times floor, fused and eager back to back (the order rotates between
    iterations), then op 1 fused and eager three times. Ratios are the median over
    iterations of the ratio within one iteration, which cancels the slow drifts of a shared
    machine; the minimum times are printed beside them.
    """
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    if not ext.load():
        raise SystemExit("the restorekit extension is not available")
    allocator.keep_freed_memory()
    print(f"allocator: {allocator.describe()}; {iters} iterations, paired medians\n")
    print("| shape | op1 fused ms (min) | op1 eager/fused | floor ms (min) | block fused ms (min) "
          "| fused/floor | eager/fused |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    blocks = ["floor", "fused", "eager"]
    for name, shape in SHAPES.items():
        cases = _cases(shape)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for fn in cases.values():
            fn()
        for i in range(iters):
            for k in blocks[i % 3:] + blocks[: i % 3]:
                times[k].append(_time(cases[k]))
            for j in range(3):
                for k in ("op1_fused", "op1_eager")[:: 1 if (i + j) % 2 else -1]:
                    times[k].append(_time(cases[k]))
        m = {k: min(v) * 1e3 for k, v in times.items()}
        print(
            f"| {name} | {m['op1_fused']:.2f} | {_paired(times, 'op1_eager', 'op1_fused'):.2f} "
            f"| {m['floor']:.1f} | {m['fused']:.1f} | {_paired(times, 'fused', 'floor'):.3f} "
            f"| {_paired(times, 'eager', 'fused'):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
