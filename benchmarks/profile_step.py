"""Where a Pix2PixHD training step spends its time: convolutions and matmuls vs the rest.

Usage: python benchmarks/profile_step.py [--preset quick] [--device cpu] [--steps 5]
       [--precisions fp32,bf16]

Profiles ``--steps`` steps (after warm-up) of the engine's own step, plain and fused, with
``torch.profiler`` and sums each operator's *self* time: convolution and matmul kernels
(forward and backward) on one side, everything else (normalisation, activations, padding,
losses, optimiser, casts, copies) on the other. The share outside convolutions and matmuls
is what fusing the rest of the network can remove.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from step_times import make_case
from torch.profiler import ProfilerActivity, profile

# Operators whose self time is the arithmetic of convolutions and matmuls.
HEAVY = ("conv", "mm", "addmm", "bmm", "matmul", "linear", "mkldnn_convolution",
         "convolution_backward", "cudnn", "gemm", "sgemm", "xmma", "wgmma")


def _is_heavy(name: str) -> bool:
    low = name.lower()
    return any(key in low for key in HEAVY)


def profile_case(step, device: torch.device, steps: int) -> tuple[float, float, list]:
    """(heavy ms, other ms, top other operators) per step."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        totals[event.key] += us
    heavy = sum(v for k, v in totals.items() if _is_heavy(k)) / 1e3 / steps
    rest = {k: v / 1e3 / steps for k, v in totals.items() if not _is_heavy(k)}
    top = sorted(rest.items(), key=lambda kv: -kv[1])[:8]
    return heavy, sum(rest.values()), top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print("| preset | case | conv+matmul ms/step | rest ms/step | rest share | "
          "largest rest operators (ms/step) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for precision in args.precisions.split(","):
        for fused in (False, True):
            step = make_case(args.preset, fused, precision, device)
            for _ in range(3):
                step()
            heavy, rest, top = profile_case(step, device, args.steps)
            name = f"{'fused' if fused else 'plain'} {precision}"
            tops = ", ".join(f"{k} {v:.1f}" for k, v in top[:5])
            print(f"| `{args.preset}` | {name} | {heavy:.1f} | {rest:.1f} | "
                  f"{rest / (heavy + rest):.0%} | {tops} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
