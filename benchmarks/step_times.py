"""Time one Pix2PixHD training step per preset, fused or plain, under each precision.

Usage: python benchmarks/step_times.py [--presets lol,paper,quick] [--steps 20]
       [--device cuda] [--precisions fp32,bf16,fp16] [--json OUT.json]

Everything runs in one process on one device, the configurations interleaved round by round
(so drift of clocks or temperature hits them alike); a step is what ``restorekit run --train``
does for one batch (G then D: forward, backward, Adam; GradScaler under fp16), with the
engine's own StepContext. Prints a markdown table of median milliseconds per step and the
speed-up over the plain fp32 step (NVIDIA's architecture, eager PyTorch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from restorekit.engine import allocator
from restorekit.engine.trainer import make_step_context, step_function
from restorekit.pipeline import Pipeline
from restorekit_pix2pixhd.model import Pix2PixHD


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(preset: str, fused: bool, precision: str, device: torch.device,
              **settings: Any):
    """A built model, its fixed batch and a step function, as the engine would run them
    (``settings``: more options, e.g. ``cuda_graph=True`` or ``fused_optimizer=False``)."""
    torch.manual_seed(0)
    options = Pix2PixHD.make_options(preset, fused=fused, precision=precision, **settings)
    model = Pix2PixHD(options, Pipeline())
    model.build(device)
    n, size = options.batch_size, options.crop_size
    gen = torch.Generator().manual_seed(0)
    low = (torch.rand(n, 3, size, size, generator=gen) * 0.2).to(device)
    high = torch.rand(n, 3, size, size, generator=gen).to(device)
    train_step = step_function(model, make_step_context(model, options, device, precision))

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        train_step(low, high)
        _sync(device)
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="lol,paper,quick")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()  # as `restorekit run` does: freed activations are reused
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the engine sets for fp32
        torch.backends.cudnn.allow_tf32 = True
    precisions = args.precisions.split(",")
    results: dict[str, dict[str, float]] = {}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# training step times on {where}, torch {torch.__version__}", file=sys.stderr)
    for preset in args.presets.split(","):
        cases = {}
        for precision in precisions:
            for fused in (False, True):
                name = f"{'fused' if fused else 'plain'} {precision}"
                cases[name] = make_case(preset, fused, precision, device)
        for step in cases.values():
            for _ in range(args.warmup):
                step()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.steps):  # interleaved rounds
            for name, step in cases.items():
                times[name].append(step())
        results[preset] = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"# {preset}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in results[preset].items()),
              file=sys.stderr)

    names = [f"{impl} {p}" for p in precisions for impl in ("plain", "fused")]
    print("| preset | " + " | ".join(names) + " | best vs plain fp32 |")
    print("| --- |" + " ---: |" * (len(names) + 1))
    for preset, row in results.items():
        base = row.get("plain fp32")
        best = min(row, key=row.get)
        gain = f"{best}: {base / row[best]:.2f}x" if base else best
        print(f"| `{preset}` | " + " | ".join(f"{row[n]:.2f} ms" for n in names)
              + f" | {gain} |")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                         "ms": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
