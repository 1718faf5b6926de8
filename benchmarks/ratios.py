"""Summarise a pytest-benchmark JSON of benchmarks/ as a markdown table of speed ratios.

Usage: python benchmarks/ratios.py BENCH.json [--stat min|median|mean]

Columns (values > 1 mean the fused version is faster, except "fused/floor" where 1.00 is
the floor of the two convolutions alone and lower is better):
  op1 eager/fused: InstanceNorm2d+ReLU+ReflectionPad2d vs instance_norm_relu_pad
  block fused/floor, eager/fused, compile/fused: the whole ResnetBlock
  train step plain/fused: one Pix2PixHD training step (benchmarks/test_train_step.py)
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(path: Path, stat: str) -> dict[tuple[str, str], dict[tuple[str, str, str], float]]:
    """{(device, shape): {(case, impl, mode): seconds}} from a --benchmark-json file."""
    data = json.loads(path.read_text())
    out: dict = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if not {"case", "impl", "mode", "shape", "device"} <= info.keys():
            continue
        key = (info["case"], info["impl"], info["mode"])
        out[(info["device"], info["shape"])][key] = bench["stats"][stat]
    return out


def _ratio(t: dict, num: tuple, den: tuple) -> str:
    if num in t and den in t and t[den] > 0:
        return f"{t[num] / t[den]:.2f}"
    return "n/a"


def table(results: dict, stat: str) -> str:
    """The markdown table, one row per (device, shape) and mode."""
    head = (
        "| device | shape | mode | op1 fused ms | op1 eager/fused | block fused ms | floor ms "
        "| block fused/floor | block eager/fused | block compile/fused |"
    )
    lines = [head, "|" + "---|" * 10]
    steps = []
    for (device, shape), t in sorted(results.items()):
        if ("train_step", "fused", "fwdbwd") in t:
            fused, plain = t[("train_step", "fused", "fwdbwd")], t.get(("train_step", "eager",
                                                                        "fwdbwd"))
            steps.append(f"| {device} | {shape} | {fused * 1e3:.1f} | "
                         + (f"{plain * 1e3:.1f} | {plain / fused:.3f} |" if plain else "n/a |"))
            continue
        for mode in ("fwd", "fwdbwd"):
            op1 = t.get(("op1", "fused", mode))
            blk = t.get(("block", "fused", mode))
            floor = t.get(("block", "floor", mode))
            cells = [
                device,
                shape,
                mode,
                f"{op1 * 1e3:.2f}" if op1 else "n/a",
                _ratio(t, ("op1", "eager", mode), ("op1", "fused", mode)),
                f"{blk * 1e3:.1f}" if blk else "n/a",
                f"{floor * 1e3:.1f}" if floor else "n/a",
                _ratio(t, ("block", "fused", mode), ("block", "floor", mode)),
                _ratio(t, ("block", "eager", mode), ("block", "fused", mode)),
                _ratio(t, ("block", "compile", mode), ("block", "fused", mode)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if steps:
        lines += ["", "| device | preset | train step fused ms | plain ms | plain/fused |",
                  "|---|---|---|---|---|", *steps]
    return "\n".join(lines) + f"\n\n(statistic: {stat} over rounds)"


def main(argv: list[str] | None = None) -> int:
    """Print the ratio table for one benchmark JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    args = parser.parse_args(argv)
    print(table(load(args.json, args.stat), args.stat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
