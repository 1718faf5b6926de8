"""Time one Pix2PixHD training step per preset under each configuration (``CONFIGS``).

Usage: python benchmarks/step_times.py [--presets lol,paper,quick] [--steps 20]
       [--device cuda] [--configs "plain fp32,fused bf16 graph"] [--json OUT.json]

Everything runs in one process on one device, the configurations interleaved round by round
(so drift of clocks or temperature hits them alike); a step is what ``restorekit run --train``
does for one batch (G then D: forward, backward, Adam), with the engine's own step context
and step function (``--fused-optimizer``, ``--cuda-graph``). Prints a markdown table of
median milliseconds per step, the achieved TFLOP/s (``benchmarks/flops.py``) and the
speed-up over the plain fp32 step (NVIDIA's architecture and optimiser, eager PyTorch).
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

from restorekit.engine import allocator, graphed
from restorekit.engine.config import native_bf16_cpu
from restorekit.engine.step import make_step_context, step_function
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


# Configuration -> settings of make_case (Pix2PixHD and engine options). "plain fp32" is the
# reference of every speed-up: NVIDIA's architecture and optimiser in eager PyTorch, fp32 on
# TF32 tensor cores on CUDA. The graphed ones need CUDA.
CONFIGS: dict[str, dict[str, Any]] = {
    "plain fp32": {"fused": False, "precision": "fp32", "fused_optimizer": False},
    "fused fp32": {"fused": True, "precision": "fp32", "fused_optimizer": True},
    "fused bf16": {"fused": True, "precision": "bf16", "fused_optimizer": True},
    "fused fp32 graph": {"fused": True, "precision": "fp32", "fused_optimizer": True,
                         "cuda_graph": True},
    "fused bf16 graph": {"fused": True, "precision": "bf16", "fused_optimizer": True,
                         "cuda_graph": True},
}


def runs_on(config: str, device: torch.device) -> bool:
    """Whether ``config`` runs on ``device`` (graphs need CUDA; bf16 a CPU that has it)."""
    settings = CONFIGS[config]
    if settings.get("cuda_graph") and device.type != "cuda":
        return False
    return not (settings["precision"] == "bf16" and device.type == "cpu"
                and not native_bf16_cpu())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="lol,paper,quick")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated names of CONFIGS")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from flops import step_flops  # flops imports this module

    allocator.keep_freed_memory()  # as `restorekit run` does: freed activations are reused
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the engine sets for fp32
        torch.backends.cudnn.allow_tf32 = True
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    names = [c for c in args.configs.split(",") if runs_on(c, device)]
    results: dict[str, dict[str, float]] = {}
    tflop: dict[str, float] = {}
    errors: dict[str, dict[str, str]] = {}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# training step times on {where}, torch {torch.__version__}", file=sys.stderr)
    for preset in args.presets.split(","):
        tflop[preset] = step_flops(preset, torch.device("meta")) / 1e12
        cases, failed = {}, {}
        for name in names:
            try:  # one configuration failing (e.g. a capture) must not cost the others
                cases[name] = make_case(preset, device=device, **CONFIGS[name])
                for _ in range(graphed.WARMUP_STEPS + 1):  # a graphed step is captured by then
                    cases[name]()
            except Exception as exc:  # noqa: BLE001 (reported in the table)
                cases.pop(name, None)
                failed[name] = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                print(f"# {preset}: {name} failed: {failed[name]}", file=sys.stderr)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.steps):  # interleaved rounds
            for name, step in cases.items():
                times[name].append(step())
        results[preset] = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        errors[preset] = failed
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"# {preset}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in results[preset].items()),
              file=sys.stderr)

    print("| preset | TFLOP/step | " + " | ".join(names) + " | best vs plain fp32 |")
    print("| --- | ---: |" + " ---: |" * (len(names) + 1))
    for preset, row in results.items():
        base = row.get("plain fp32")
        best = min(row, key=row.get) if row else None
        gain = f"{best}: {base / row[best]:.2f}x" if base and best else str(best)
        cells = [f"{row[n]:.2f} ms ({tflop[preset] / row[n] * 1e3:.1f} TFLOP/s)" if n in row
                 else f"failed: {errors[preset].get(n, '?')}" for n in names]
        print(f"| `{preset}` | {tflop[preset]:.3f} | " + " | ".join(cells) + f" | {gain} |")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                         "tflop_per_step": tflop, "ms": results,
                                         "failed": errors}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
