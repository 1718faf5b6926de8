"""Training options shared by every trainable model.

A trainable model's ``Options`` dataclass subclasses :class:`TrainConfig`; the CLI turns
every field into a ``--field-name`` option and shows ``metadata["help"]`` as its help;
``metadata["range"]`` (``(lo, hi)``, ``None`` = no limit, both ends allowed unless a third
item says otherwise, see :func:`restorekit.api.check_range`), ``metadata["choices"]`` and
the field's type are checked wherever options are made (the command line, ``--config``
files, ``Model.make_options``, loading a checkpoint). Every number here has a finite upper
bound: nothing is allocated or started (workers, crops, steps) for a size nobody means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from restorekit.api import MAX_PROCESSES
from restorekit.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Options of the training loop (epochs, batches, evaluation, checkpoints, limits)."""

    epochs: int = field(default=10, metadata={
        "help": "number of training epochs", "range": (1, 100_000)})
    batch_size: int = field(default=1, metadata={
        "help": "training pairs per batch", "range": (1, 4096)})
    crop_size: int = field(default=256, metadata={
        "help": "side of the random training crops", "range": (8, 16384)})
    samples_per_epoch: int = field(default=0, metadata={
        "help": "training crops per epoch (0 = one per training pair)",
        "range": (0, 10_000_000)})
    eval_every: int = field(default=1, metadata={
        "help": "evaluate every N epochs (0 = only at the end)", "range": (0, 100_000)})
    checkpoint_every: int = field(default=0, metadata={
        "help": "also checkpoint every N steps (0 = at epoch ends only)",
        "range": (0, 10**12)})
    log_every: int = field(default=10, metadata={
        "help": "log the losses every N steps (0 = never)", "range": (0, 10**12)})
    select_metric: str = field(default="", metadata={
        "help": "the metric whose best evaluation on the validation split is kept as "
                "checkpoints/best, in its own direction (default: psnr when evaluated, else "
                "the first metric with a direction)",
        "aliases": ("--best-metric",)})
    num_samples: int = field(default=3, metadata={
        "help": "test images shown in the sample grids", "range": (0, 64)})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    precision: str = field(
        default="auto",
        metadata={"help": "fp32 (TF32 tensor cores on CUDA), bf16 or fp16 (autocast of the "
                          "model's ctx.autocast() blocks; fp16 with loss scaling); auto = the "
                          "measured fastest for the device",
                  "choices": PRECISIONS})
    fused_optimizer: bool = field(
        default=True, metadata={"help": "torch's fused optimiser kernels (one kernel per step "
                                        "instead of several per parameter) for every "
                                        "optimiser the model builds that has them (a "
                                        "warning names those that have not)"})
    cuda_graph: bool = field(
        default=False, metadata={"help": "capture the model's whole training step in a "
                                         "CUDA graph and replay it (CUDA, fp32 or bf16, one "
                                         "process; a learning-rate change recaptures)"})
    seed: int = field(default=0, metadata={
        "help": "random seed (python, numpy, torch, data)", "range": (0, 2**32 - 1)})
    max_steps: int = field(default=0, metadata={
        "help": "stop with a checkpoint after N steps in total (0 = no limit)",
        "range": (0, 10**12)})
    max_minutes: float = field(default=0.0, metadata={
        "help": "stop with a checkpoint after N minutes of wall time (0 = no limit)",
        "range": (0.0, 10_000_000.0)})
    num_workers: int = field(default=0, metadata={
        "help": "data loading worker processes (0 = in the main process)",
        "range": (0, MAX_PROCESSES)})
    tensorboard: bool = field(
        default=False, metadata={"help": "also log losses, metrics and sample grids for "
                                         "TensorBoard (RUN/tensorboard; pip install "
                                         "'restorekit[tensorboard]')"})

    def __post_init__(self) -> None:
        check_precision(self.precision)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_precision(device: torch.device) -> str:
    """What ``precision=auto`` means on ``device``: the fastest at equal quality as measured.

    CUDA: fp32 (TF32 tensor cores); bf16 and fp16 autocast were slower at every preset on
    an H200, the step being bound by kernel launches. CPU: bf16 where the CPU has native
    bfloat16 (a ``quick`` step 1.6x faster on a 2-core Zen 4, same test PSNR), else fp32.
    Measured in docs/benchmarks.md, "Precision".
    """
    if device.type == "cpu" and native_bf16_cpu():
        return "bf16"
    return "fp32"


def check_precision(name: str) -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a one-line ``UsageError``."""
    if name not in PRECISIONS:
        raise UsageError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``device`` (``auto`` -> the device's default)."""
    name = check_precision(name)
    return auto_precision(device) if name == "auto" else name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu`` (``cpu:0``), ``cuda`` or
    ``cuda:N`` of a present device; anything else (empty, ``cpu:3``) a one-line ``UsageError``."""
    usage = "use auto, cpu, cuda or cuda:N"
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"--device: empty device name ({usage})")
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {name!r} ({usage})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) present")
    elif device.type != "cpu":
        raise UsageError(f"--device: unsupported device {name!r} ({usage})")
    elif device.index not in (None, 0):
        raise UsageError(f"--device {name}: the CPU has no index {device.index} (use cpu)")
    return device
