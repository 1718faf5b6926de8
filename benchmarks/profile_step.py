"""Where a Pix2PixHD training step spends its time: convolutions and matmuls vs the rest.

Usage: python benchmarks/profile_step.py [--preset quick] [--device cpu] [--steps 5]
       [--precisions fp32,bf16] [--variants plain,fused]

Profiles ``--steps`` steps (after warm-up) of the engine's own step, plain and fused, with
``torch.profiler`` and sums each operator's *self* time: convolution and matmul kernels
(forward and backward, with whatever they call, e.g. the copy a transposed convolution makes
of its output) on one side, everything else (normalisation, activations, padding, losses,
optimiser, casts, autograd) on the other. The share outside convolutions and matmuls is what
fusing the rest of the network can remove. On CUDA the split is by kernel name.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch
from step_times import make_case
from torch.profiler import ProfilerActivity, profile

from restorekit.engine import allocator

# Operators whose self time is the arithmetic of convolutions and matmuls.
HEAVY = ("conv", "mm", "addmm", "bmm", "matmul", "linear", "mkldnn_convolution",
         "convolution_backward", "cudnn", "gemm", "sgemm", "xmma", "wgmma")


def _is_heavy(name: str) -> bool:
    low = name.lower()
    return any(key in low for key in HEAVY)


def _split(events) -> tuple[dict[str, float], dict[str, float]]:
    """Self time (us) by operator name, inside a convolution/matmul (any ancestor is one)
    or outside: a copy that a convolution makes of its input belongs to the convolution."""
    heavy: dict[str, float] = defaultdict(float)
    rest: dict[str, float] = defaultdict(float)
    for event in events:
        node, inside = event, False
        while node is not None and not inside:
            inside = _is_heavy(node.name)
            node = node.cpu_parent
        (heavy if inside else rest)[event.name] += event.self_cpu_time_total
    return heavy, rest


def profile_case(step, device: torch.device, steps: int) -> tuple[float, float, list]:
    """(heavy ms, other ms, top other operators) per step."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    if device.type == "cuda":
        totals: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            totals[event.key] += event.self_device_time_total
        heavy_us = {k: v for k, v in totals.items() if _is_heavy(k)}
        rest_us = {k: v for k, v in totals.items() if not _is_heavy(k)}
    else:
        heavy_us, rest_us = _split(prof.events())
    rest = {k: v / 1e3 / steps for k, v in rest_us.items()}
    top = sorted(rest.items(), key=lambda kv: -kv[1])[:8]
    return sum(heavy_us.values()) / 1e3 / steps, sum(rest.values()), top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", default="plain,fused", help="plain, fused or both")
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()  # as `restorekit run` does: freed activations are reused
    device = torch.device(args.device)
    print("| preset | case | conv+matmul ms/step | rest ms/step | rest share | "
          "largest rest operators (ms/step) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for precision in args.precisions.split(","):
        for fused in [v == "fused" for v in args.variants.split(",")]:
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
