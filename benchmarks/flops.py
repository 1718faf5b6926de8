"""FLOPs of one Pix2PixHD training step, as torch.utils.flop_counter counts them.

Usage: python benchmarks/flops.py [--preset lol] [--device meta]

The count covers convolutions and matmuls, forward and backward, of one whole step (G then
D, as ``restorekit run --train`` does it; see ``step_times.make_case``); normalisation,
activations, losses and Adam are memory-bound and not counted. The count depends on the
preset only (the fused networks and bf16 give the same), so this script counts the plain fp32
step; the default device ``meta`` counts it without computing anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from step_times import make_case
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(preset: str, device: torch.device) -> int:
    """FLOPs of one plain fp32 training step of ``preset``, built on ``device``."""
    return count_flops(make_case(preset, False, "fp32", device))


def main(argv: list[str] | None = None) -> int:
    """Print the TFLOP of one training step of the preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lol")
    parser.add_argument("--device", default="meta")
    args = parser.parse_args(argv)
    flops = step_flops(args.preset, torch.device(args.device))
    print(f"{args.preset}: {flops / 1e12:.4f} TFLOP per training step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
