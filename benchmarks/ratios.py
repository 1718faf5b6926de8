"""Summarise a pytest-benchmark JSON of benchmarks/ as markdown tables of times and ratios.

Usage: python benchmarks/ratios.py BENCH.json [--stat min|median|mean] [--peak-gbps GBPS]

Ops (op1: instance_norm_act as the ResnetBlock uses it, ReLU and pad 1; opL: as the
discriminator does, LeakyReLU 0.2 and no pad), forward and forward+backward: fused time,
eager/fused, GB/s (the bytes an ideal op moves / time) and % of the peak DRAM bandwidth:
--peak-gbps, else $RK_PEAK_GBPS, else, on CUDA rows, the peak the GPU's properties imply.
Block: fused/floor (1.00 is its two convolutions alone, lower is better), eager/fused,
compile/fused and compile-fused/fused (above 1: the fused block is faster).
Train step: ms per step, speed-up over plain fp32 and achieved TFLOP/s per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

OP_VARIANTS = ("op1", "opL")
BLOCK_RATIOS = (  # (column, numerator impl, denominator impl)
    ("fused/floor", "fused", "floor"),
    ("eager/fused", "eager", "fused"),
    ("compile/fused", "compile", "fused"),
    ("compile-fused/fused", "compile-fused", "fused"),
)
REFERENCE_STEP = "plain fp32"
# Train-step impls of the JSON written before the configurations (fp32 both).
OLD_STEP_IMPLS = {"fused": "fused fp32", "eager": REFERENCE_STEP}


@dataclass(frozen=True)
class Measurement:
    """One benchmark: seconds per call, and what ratios.py derives rates from."""

    seconds: float
    bytes: int | None = None  # an ideal op's traffic
    flops: int | None = None  # of one training step
    timing: str = "wall"  # ops on CUDA: "graph" (replayed: device time) or "queued" (wall)


@dataclass
class Results:
    """{(device, shape, dtype, timing): {(case, impl, mode): Measurement}} and the GPU's peak
    GB/s."""

    rows: dict[tuple[str, str, str, str], dict[tuple[str, str, str], Measurement]] = field(
        default_factory=lambda: defaultdict(dict))
    gpu_peak_gbps: float | None = None


def load(path: Path, stat: str) -> Results:
    """The benchmarks of a --benchmark-json file (old files: float32, no bytes or flops)."""
    data = json.loads(path.read_text())
    out = Results(gpu_peak_gbps=data.get("machine_info", {}).get("gpu_peak_gbps"))
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if not {"case", "impl", "mode", "shape", "device"} <= info.keys():
            continue
        impl = info["impl"]
        if info["case"] == "train_step":
            impl = OLD_STEP_IMPLS.get(impl, impl)
        timing = info.get("timing", "wall")
        key = (info["device"], info["shape"], info.get("dtype", "float32"), timing)
        out.rows[key][(info["case"], impl, info["mode"])] = Measurement(
            bench["stats"][stat], info.get("bytes"), info.get("flops"), timing)
    return out


def _ratio(t: dict, num: tuple, den: tuple) -> str:
    if num in t and den in t and t[den].seconds > 0:
        return f"{t[num].seconds / t[den].seconds:.2f}"
    return "n/a"


def _time(m: Measurement | None, scale: float, digits: int) -> str:
    return f"{m.seconds * scale:.{digits}f}" if m else "n/a"


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def op_table(results: Results, peak_gbps: float | None) -> str | None:
    """Fused op time, eager/fused, GB/s and % of peak per (device, shape, dtype, mode)."""
    show_peak = peak_gbps is not None or results.gpu_peak_gbps is not None
    head = ["device", "shape", "dtype", "mode"]
    for v in OP_VARIANTS:
        head += [f"{v} fused µs", f"{v} eager/fused", f"{v} GB/s"]
        head += [f"{v} % peak"] if show_peak else []
    head.append("timing")
    rows = []
    for (device, shape, dtype, _), t in sorted(results.rows.items()):
        peak = peak_gbps or (results.gpu_peak_gbps if device == "cuda" else None)
        for mode in ("fwd", "fwdbwd"):
            cells, timings = [device, shape, dtype, mode], set()
            for v in OP_VARIANTS:
                fused = t.get((v, "fused", mode))
                gbps = fused.bytes / fused.seconds / 1e9 if fused and fused.bytes else None
                cells += [_time(fused, 1e6, 1), _ratio(t, (v, "eager", mode), (v, "fused", mode)),
                          f"{gbps:.0f}" if gbps else "n/a"]
                if show_peak:
                    cells.append(f"{gbps / peak:.0%}" if gbps and peak else "n/a")
                timings |= {t[(v, i, mode)].timing for i in ("fused", "eager")
                            if (v, i, mode) in t}
            if timings:
                rows.append([*cells, ", ".join(sorted(timings))])
    return _markdown(head, rows) if rows else None


def block_table(results: Results) -> str | None:
    """Fused block and floor times and the block's ratios per (device, shape, dtype, mode)."""
    head = ["device", "shape", "dtype", "mode", "fused ms", "floor ms",
            *(name for name, _, _ in BLOCK_RATIOS)]
    rows = []
    for (device, shape, dtype, _), t in results.rows.items():
        for mode in ("fwd", "fwdbwd"):
            fused, floor = t.get(("block", "fused", mode)), t.get(("block", "floor", mode))
            if not (fused or floor):
                continue
            rows.append([device, shape, dtype, mode, _time(fused, 1e3, 2), _time(floor, 1e3, 2),
                         *(_ratio(t, ("block", num, mode), ("block", den, mode))
                           for _, num, den in BLOCK_RATIOS)])
    return _markdown(head, rows) if rows else None


def step_table(results: Results) -> str | None:
    """ms per training step, speed-up over plain fp32 and TFLOP/s per (device, preset)."""
    head = ["device", "preset", "configuration", "ms/step", f"vs {REFERENCE_STEP}", "TFLOP/s"]
    rows = []
    for (device, preset, _, _), t in results.rows.items():
        steps = {impl: m for (case, impl, _), m in t.items() if case == "train_step"}
        reference = steps.get(REFERENCE_STEP)
        for impl, m in sorted(steps.items(), key=lambda item: item[0] != REFERENCE_STEP):
            speedup = f"{reference.seconds / m.seconds:.2f}x" if reference else "n/a"
            tflops = f"{m.flops / m.seconds / 1e12:.3g}" if m.flops else "n/a"
            rows.append([device, preset, impl, _time(m, 1e3, 1), speedup, tflops])
    return _markdown(head, rows) if rows else None


def table(results: Results, stat: str, peak_gbps: float | None = None) -> str:
    """The op, block and train-step tables (those with data), and a note on the statistic."""
    peak = peak_gbps or results.gpu_peak_gbps
    notes = [f"statistic: {stat} over rounds"]
    if peak:
        source = "given" if peak_gbps else "from the GPU's properties"
        notes.append(f"peak DRAM bandwidth {peak:.0f} GB/s ({source})")
    parts = [op_table(results, peak_gbps), block_table(results), step_table(results)]
    return "\n\n".join([p for p in parts if p] + ["(" + "; ".join(notes) + ")"])


def main(argv: list[str] | None = None) -> int:
    """Print the tables for one benchmark JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    parser.add_argument("--peak-gbps", type=float,
                        default=float(os.environ.get("RK_PEAK_GBPS") or 0) or None,
                        help="peak DRAM bandwidth for the %% of peak (default: $RK_PEAK_GBPS)")
    args = parser.parse_args(argv)
    print(table(load(args.json, args.stat), args.stat, args.peak_gbps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
