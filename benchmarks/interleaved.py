"""Interleaved timing of the fused ResnetBlock on a shared, noisy machine.

pytest-benchmark times each case in one stretch, so load from other processes can land on
one case and not another. This script alternates floor / fused / eager (forward+backward)
and fused / eager op 1 within every iteration and keeps the minimum of each, so the ratios
compare like with like. Like the pytest suite, it runs with the allocator setting of
``restorekit run`` (``RESTOREKIT_MALLOC=system`` for glibc's defaults).
Usage: python benchmarks/interleaved.py [ITERATIONS]
"""

from __future__ import annotations

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
        "op1_fused": lambda: torch.autograd.grad(ops.instance_norm_relu_pad(x, 1e-5), x, gp),
        "op1_eager": lambda: torch.autograd.grad(_eager_op1(x), x, gp),
    }


def _time(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Print a markdown table of minimum forward+backward times and ratios per shape."""
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not ext.load():
        raise SystemExit("the restorekit extension is not available")
    allocator.keep_freed_memory()
    print(f"allocator: {allocator.describe()}\n")
    print("| shape | op1 fused ms | op1 eager/fused | floor ms | block fused ms | fused/floor "
          "| eager/fused |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        cases = _cases(shape)
        best = {k: float("inf") for k in cases}
        for fn in cases.values():
            fn()
        for _ in range(iters):
            for k in ("floor", "fused", "eager"):
                best[k] = min(best[k], _time(cases[k]))
            for _ in range(3):
                for k in ("op1_fused", "op1_eager"):
                    best[k] = min(best[k], _time(cases[k]))
        m = {k: v * 1e3 for k, v in best.items()}
        print(
            f"| {name} | {m['op1_fused']:.2f} | {m['op1_eager'] / m['op1_fused']:.2f} "
            f"| {m['floor']:.1f} | {m['fused']:.1f} | {m['fused'] / m['floor']:.3f} "
            f"| {m['eager'] / m['fused']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
