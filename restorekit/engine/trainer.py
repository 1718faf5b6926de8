"""The training loop: devices, mixed precision, checkpoints, resume, evaluation, reports.

The engine owns the loop; a :class:`~restorekit.api.TrainableModel` owns its networks,
optimisers and the loss of one step (``train_step``), in the spirit of BasicSR's split
between training logic and architectures.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from restorekit._version import __version__
from restorekit.api import Metric, TrainableModel
from restorekit.engine import checkpoint as ckpt
from restorekit.engine import distributed, graphed, optimizers
from restorekit.engine.background import BackgroundLoader
from restorekit.engine.config import TrainConfig, resolve_device, resolve_precision
from restorekit.engine.monitor import CHECK_EVERY, LossMonitor
from restorekit.engine.report import write_report
from restorekit.engine.rundir import RunDir
from restorekit.errors import DataError, TrainingError, UsageError
from restorekit.plugins import Registry

SAMPLE_HEIGHT = 256
"""Sample grid cells are downscaled to at most this many pixels high."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``stopped`` is ``"completed"``, ``"max_steps"``, ``"max_minutes"`` or
    ``"interrupted"`` (Ctrl-C; continue with ``resume=True``).
    """

    run_dir: Path
    epoch: int
    step: int
    stopped: str
    metrics: dict[str, float] = field(default_factory=dict)
    best_psnr: float | None = None
    checkpoint: Path | None = None
    report: Path | None = None


class StepContextImpl:
    """The :class:`~restorekit.api.StepContext` a model's ``train_step`` receives."""

    def __init__(self, device: torch.device, optimizers: dict[str, torch.optim.Optimizer],
                 precision: str = "fp32", dist: distributed.Distributed | None = None) -> None:
        self.device = device
        self.dist = dist or distributed.current()  # averages gradients across ranks
        self.epoch = 0
        self.step = 0
        self.precision = precision
        self.optimizers = optimizers
        # Loss scaling only for float16 (bfloat16 has float32's exponent range).
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=precision == "fp16")
                        for name in optimizers}
        self.updates = 0  # optimiser steps taken in the current train_step
        self.graphed = False  # the step is captured in a CUDA graph (engine.graphed)

    @property
    def amp(self) -> bool:
        """Whether the step runs under autocast (bf16 or fp16)."""
        return self.precision != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bfloat16 or float16 as ``precision`` says; a no-op for fp32."""
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # A captured step must cast its weights inside the graph, not reuse cached casts.
        return torch.autocast(device_type=self.device.type, dtype=dtype,
                              cache_enabled=not self.graphed)

    def backward_step(self, loss: torch.Tensor, optimizer: str) -> None:
        """Zero the named optimiser's gradients, backpropagate ``loss``, step (scaled)."""
        if optimizer not in self.optimizers:
            known = ", ".join(sorted(self.optimizers)) or "none"
            raise TrainingError(f"train_step asked for unknown optimizer {optimizer!r} "
                                f"(known: {known})")
        opt, scaler = self.optimizers[optimizer], self.scalers[optimizer]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self.dist.average_gradients(opt)
        scaler.step(opt)
        scaler.update()
        self.updates += 1


def make_step_context(model: TrainableModel, cfg: TrainConfig, device: torch.device,
                      precision: str, dist: distributed.Distributed | None = None
                      ) -> StepContextImpl:
    """The step context for a built ``model``, its optimisers run as ``cfg`` says
    (``fused_optimizer``, ``cuda_graph``)."""
    ctx = StepContextImpl(device, dict(model.optimizers()), precision, dist)
    if cfg.fused_optimizer:
        optimizers.use_fused(ctx.optimizers)
    if cfg.cuda_graph:
        graphed.prepare(device, precision, ctx.dist.world_size, ctx.optimizers)
        ctx.graphed = True
    return ctx


def step_function(model: TrainableModel, ctx: StepContextImpl
                  ) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """``(low, high) -> losses``: one training step, replayed from a CUDA graph when
    ``ctx.graphed``."""
    if ctx.graphed:
        return graphed.GraphedStep(model, ctx)
    return lambda low, high: model.train_step(low, high, ctx)


class _DeferredInterrupt:
    """First Ctrl-C: finish the current step, then stop with a checkpoint; second: at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("restorekit: interrupted: finishing this step, then saving a checkpoint "
                   "(Ctrl-C again to stop at once)")

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Evaluation must not change what training draws next (resume exactness)."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (all devices) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _downscale(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image as PILImage

    h, w = image.shape[:2]
    if h <= height:
        return image.astype(np.float32)
    size = (max(1, round(w * height / h)), height)
    pil = PILImage.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(pil.resize(size, PILImage.Resampling.LANCZOS), np.float32) / 255.0


def sample_grid(rows: Sequence[Sequence[np.ndarray]], height: int = SAMPLE_HEIGHT) -> np.ndarray:
    """Images side by side per row (each at most ``height`` px high), rows stacked."""
    strips = []
    for row in rows:
        cells = [_downscale(np.asarray(img)[..., :3], height) for img in row]
        h = min(c.shape[0] for c in cells)
        strips.append(np.concatenate([c[:h] for c in cells], axis=1))
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    return np.concatenate(padded, axis=0).astype(np.float32)


class Trainer:
    """Trains one model into one run folder; :meth:`run` does the work (see :func:`train`)."""

    def __init__(self, model: TrainableModel, *, train_pairs: Any, test_pairs: Any,
                 run_dir: Path, registry: Registry, resume: bool = False,
                 overwrite: bool = False, data_desc: str = "",
                 extra_config: dict[str, Any] | None = None,
                 metrics: Sequence[Metric] | None = None,
                 on_evaluate: Callable[[int, int, dict[str, float]], None] | None = None,
                 ) -> None:
        if not isinstance(model.options, TrainConfig):
            raise UsageError(f"model {type(model).name!r}: its Options must subclass "
                             f"restorekit.engine.TrainConfig")
        self.model = model
        self.cfg: TrainConfig = model.options
        self.train_pairs = train_pairs
        self.test_pairs = test_pairs
        self.rundir = RunDir(run_dir)
        self.run_dir = self.rundir.path
        self.registry = registry
        self.resume = resume
        self.overwrite = overwrite
        self.data_desc = data_desc
        self.extra_config = dict(extra_config or {})
        self.metrics = list(metrics) if metrics is not None else None
        self.on_evaluate = on_evaluate
        # Progress: the epoch in progress (0-based) and batches of it done; ``step`` in total.
        self.epoch = 0
        self.step_in_epoch = 0
        self.step = 0
        self.best_psnr: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.checkpoint: Path | None = None
        self._in_step = False
        self._interrupt = _DeferredInterrupt()
        self._board: Any = None
        # Loss sums and count of the log window in progress, on the device (kept in
        # checkpoints, so the first record after a resume averages the whole window).
        self._monitor = LossMonitor()
        self._dist = distributed.setup()  # not active outside torchrun

    # -- setup -------------------------------------------------------------------------------
    def _write_config(self, device: torch.device, precision: str, resumed: bool) -> None:
        config = {
            "model": type(self.model).name,
            "options": ckpt.capture_options(self.model),
            "preprocess": str(self.model.preprocess),
            "data": self.data_desc or getattr(self.train_pairs, "describe", str)(),
            "train_pairs": len(self.train_pairs),
            "test_pairs": len(self.test_pairs) if self.test_pairs is not None else 0,
            "restorekit_version": __version__,
            "torch_version": torch.__version__,
            "device": str(device),
            "precision": precision,
            "world_size": self._dist.world_size,
            "extra": self.extra_config,
        }
        self.rundir.write_config(config, resumed=resumed)

    def _dataset(self) -> Any:
        from restorekit.data import TrainCrops

        cfg = self.cfg
        dataset = TrainCrops(self.train_pairs, cfg.crop_size,
                             samples_per_epoch=cfg.samples_per_epoch, seed=cfg.seed,
                             preprocess=self.model.preprocess)
        if len(dataset) == 0:
            raise DataError("no training pairs to train on")
        return dataset

    def _setup_metrics(self) -> dict[str, dict[str, float]]:
        """Metrics to evaluate and the classic baselines (computed once per run folder)."""
        from restorekit import evaluate

        if self.metrics is None:
            self.metrics = evaluate.default_metrics(self.registry)
        if not self._can_evaluate():
            return {}
        stored = self.rundir.read_baselines()
        if stored is not None and all(m.name in row for row in stored.values()
                                      for m in self.metrics):
            return stored
        what = getattr(self.test_pairs, "describe", lambda: "the evaluation pairs")()
        tqdm.write(f"restorekit: computing the identity and classic baselines on {what}")
        baselines = evaluate.classic_baselines(self.test_pairs, self.metrics, self.registry)
        baselines = {k: {m: float(v) for m, v in row.items()} for k, row in baselines.items()}
        self.rundir.write_baselines(baselines)
        return baselines

    def _can_evaluate(self) -> bool:
        return self._dist.is_main and self.test_pairs is not None and len(self.test_pairs) > 0

    # -- checkpoints -------------------------------------------------------------------------
    def _last_good(self) -> str:
        return (f"the last good checkpoint is {self.checkpoint}" if self.checkpoint
                else "no checkpoint was saved yet")

    def _save(self, ctx: StepContextImpl, best: bool = False) -> Path:
        window = self._monitor.read(self._last_good())  # raises after a non-finite loss
        if not self._dist.is_main:  # rank 0 alone writes the run folder
            self.checkpoint = self.rundir.checkpoint_path(RunDir.LAST)
            return self.checkpoint
        tensors, meta = ckpt.capture(self.model)
        meta.update({
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "best_psnr": self.best_psnr, "metrics": self.last_metrics,
            "scalers": {name: s.state_dict() for name, s in ctx.scalers.items()},
            "rng": ckpt.capture_rng(tensors), "world_size": self._dist.world_size,
            "restorekit_version": __version__, "torch_version": torch.__version__,
            "saved_at": _now(),
            "loss_window": {"sums": window, "count": self._monitor.count},
        })
        bad = ckpt.first_non_finite(tensors)
        if bad is not None:  # never replace the last good checkpoint with a broken one
            raise TrainingError(f"tensor {bad!r} is inf or NaN after step {self.step}; "
                                f"training stopped, {self._last_good()}")
        path = self.rundir.checkpoint_path(RunDir.LAST)
        ckpt.write_checkpoint(path, tensors, meta)
        self.rundir.commit_checkpoint(path, best, {"epoch": self.epoch, "step": self.step})
        self.checkpoint = path
        return path

    def _restore(self, path: Path, ctx: StepContextImpl) -> None:
        tensors, meta = self._dist.read_checkpoint(lambda: ckpt.read_checkpoint(path))
        ckpt.check_model(path, meta, self.model)
        ckpt.restore_networks(path, tensors, self.model)
        ckpt.restore_optimizers(path, tensors, meta, self.model)
        for name, state in meta.get("scalers", {}).items():
            if name in ctx.scalers and state and ctx.scalers[name].is_enabled():
                ctx.scalers[name].load_state_dict(state)
        self.epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.step_in_epoch = self._dist.position_in_epoch(meta)
        self.best_psnr = meta.get("best_psnr")
        self.last_metrics = meta.get("metrics") or {}
        window = meta.get("loss_window") or {}
        self._monitor = LossMonitor({k: float(v) for k, v in (window.get("sums") or {}).items()},
                                    int(window.get("count") or 0))
        self._dist.restore_rng(lambda: ckpt.restore_rng(tensors, meta["rng"]), self.cfg.seed,
                               self.step)
        self.checkpoint = path
        changed = [k for k, v in ckpt.capture_options(self.model).items()
                   if meta.get("options", {}).get(k, v) != v]
        note = f" (changed options: {', '.join(changed)})" if changed else ""
        tqdm.write(f"restorekit: resuming {self.run_dir} from {path.name} at epoch "
                   f"{self.epoch + 1}, step {self.step}{note}")
        if self._dist.is_main:
            self.rundir.truncate_logs(self.step)

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate(self, epoch_label: int) -> bool:
        """Evaluate on the test split, log it, write samples; True when PSNR improved."""
        from restorekit import evaluate

        self._monitor.read(self._last_good())  # not a model whose loss went non-finite
        modes = {m: m.training for net in self.model.networks().values() for m in net.modules()}
        try:
            with _preserved_rng():
                for net in self.model.networks().values():
                    net.eval()
                results = evaluate.evaluate(self.test_pairs, self.model.enhance, self.metrics)
                self._write_samples(epoch_label)
        finally:
            for module, mode in modes.items():
                module.training = mode
        results = {k: float(v) for k, v in results.items()}
        self.last_metrics = results
        self.rundir.log("metrics", {"epoch": epoch_label, "step": self.step, **results})
        self._board_scalars("metrics", results)
        improved = False
        psnr = results.get("psnr")
        if psnr is not None and math.isfinite(psnr) and (
                self.best_psnr is None or psnr > self.best_psnr):
            self.best_psnr, improved = psnr, True
        summary = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
        best = f" (best psnr {self.best_psnr:.4f})" if self.best_psnr is not None else ""
        tqdm.write(f"epoch {epoch_label} step {self.step}: {summary}{best}")
        if self.on_evaluate is not None:  # e.g. a tuning trial's pruning; may raise to stop
            self.on_evaluate(epoch_label, self.step, results)
        return improved

    def _write_samples(self, epoch_label: int) -> None:
        from restorekit.data import write_image

        count = min(self.cfg.num_samples, len(self.test_pairs))
        if count <= 0:
            return
        rows = []
        for i in range(count):
            low, high = self.test_pairs.pair(i)
            rows.append([low, self.model.enhance(low), high])
        grid = sample_grid(rows)
        write_image(self.rundir.sample_path(epoch_label), grid)
        board = self._tensorboard()
        if board is not None:
            board.add_image("samples/grid", grid, self.step, dataformats="HWC")
            board.flush()

    def _report(self) -> Path | None:
        if not self._dist.is_main:
            return None
        higher = {m.name: m.higher_is_better for m in self.metrics or []}
        return write_report(self.rundir, higher)

    # -- TensorBoard (optional) ---------------------------------------------------------------
    def _tensorboard(self) -> Any:
        """The SummaryWriter of ``--tensorboard`` (opened on first use), else None."""
        if self._board is None and getattr(self.cfg, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UsageError("--tensorboard needs the tensorboard package: pip install "
                                 "'restorekit[tensorboard]'") from None
            self._board = SummaryWriter(log_dir=str(self.rundir.tensorboard),
                                        purge_step=self.step or None)
        return self._board

    def _board_scalars(self, group: str, values: dict[str, Any]) -> None:
        board = self._tensorboard()
        if board is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                board.add_scalar(f"{group}/{key}", value, self.step)
        board.flush()

    def close(self) -> None:
        """Release what the trainer holds open (the TensorBoard writer, the run's lock)."""
        if self._board is not None:
            self._board.close()
            self._board = None
        self.rundir.release()

    # -- the loop ----------------------------------------------------------------------------
    def _log_losses(self, sums: dict[str, float], count: int) -> None:
        if not self._dist.is_main:
            return
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step}
        record.update({k: v / count for k, v in sums.items()})
        lrs = {name: float(opt.param_groups[0]["lr"])
               for name, opt in self.model.optimizers().items()}
        if lrs:
            record["lr"] = next(iter(lrs.values()))
            if len(lrs) > 1:
                record.update({f"lr_{name}": lr for name, lr in lrs.items()})
        self.rundir.log("losses", record)
        self._board_scalars("losses", {k: v for k, v in record.items()
                                       if k not in ("epoch", "step")})

    def _limit_reached(self, started: float) -> str | None:
        cfg = self.cfg
        if self._interrupt.requested:
            return "interrupted"
        if cfg.max_steps and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes and time.monotonic() - started >= cfg.max_minutes * 60:
            return "max_minutes"
        return None

    def _loader(self, dataset: Any, device: torch.device) -> tuple[Any, int]:
        """The remaining batches of ``self.epoch`` and the epoch's number of batches."""
        cfg = self.cfg
        n = len(dataset)
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + self.epoch)
        order = torch.randperm(n, generator=gen).tolist()
        batches = self._dist.shard(order, cfg.batch_size)  # this rank's part of each batch
        per_epoch = len(batches)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches[self.step_in_epoch:], num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            # Its own generator: the loader must not draw from torch's global RNG.
            generator=torch.Generator().manual_seed(cfg.seed))
        return loader, per_epoch

    def _train_epochs(self, dataset: Any, ctx: StepContextImpl, device: torch.device,
                      started: float) -> str:
        model, cfg = self.model, self.cfg
        num_epochs = model.num_epochs()
        stopped = self._dist.agree_stop(self._limit_reached(started))
        step = step_function(model, ctx)
        while stopped is None and self.epoch < num_epochs:
            ctx.epoch = self.epoch
            model.on_epoch_start(self.epoch)
            dataset.set_epoch(self.epoch)
            loader, per_epoch = self._loader(dataset, device)
            if not self.step_in_epoch:
                self._monitor.reset()
            bar = tqdm(total=per_epoch, initial=self.step_in_epoch, dynamic_ncols=True,
                       desc=f"epoch {self.epoch + 1}/{num_epochs}", leave=False)
            # Nothing in this loop reads the device but at the logging cadence and
            # checkpoints (see restorekit.testing.HostReads).
            batches = BackgroundLoader(loader, device)
            try:
                for batch in batches:
                    low = batch["low"].to(device, non_blocking=True)
                    high = batch["high"].to(device, non_blocking=True)
                    ctx.step, ctx.updates = self.step, 0
                    self._in_step = True
                    self._dist.sync_buffers(model.networks())
                    self._monitor.update(self._dist.reduce_losses(step(low, high)),
                                         self.epoch, self.step)
                    self.step += 1
                    self.step_in_epoch += 1
                    self._in_step = False
                    bar.update(1)
                    if self.step % (cfg.log_every or CHECK_EVERY) == 0:
                        sums, count = self._monitor.read(self._last_good()), self._monitor.count
                        bar.set_postfix({k: f"{v / count:.4g}" for k, v in sums.items()})
                        if cfg.log_every > 0:
                            self._log_losses(sums, count)
                            self._monitor.reset()
                    if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0:
                        self._save(ctx)
                    if self._dist.stop_due(self.step) or self.step == cfg.max_steps:
                        stopped = self._dist.agree_stop(self._limit_reached(started))
                        if stopped:
                            break
            finally:
                batches.close()
                bar.close()
            if self.step_in_epoch >= per_epoch:  # the epoch is complete
                label = self.epoch + 1
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                last = self.epoch >= num_epochs
                due = cfg.eval_every > 0 and label % cfg.eval_every == 0
                improved = False
                if self._can_evaluate() and (due or last or stopped in ("max_steps",
                                                                       "max_minutes")):
                    improved = self._evaluate(label)
                self._save(ctx, best=improved)
                if improved or last:
                    self._report()
            elif stopped:
                improved = False
                if self._can_evaluate() and stopped != "interrupted":
                    improved = self._evaluate(self.epoch + 1)
                self._save(ctx, best=improved)
        return stopped or "completed"

    def run(self) -> TrainResult:
        """Train (or resume) until the epochs are done or a limit/interrupt stops it."""
        model, cfg = self.model, self.cfg
        prepared = self._dist.from_main(lambda: str(self.rundir.prepare(self.resume,
                                                                        self.overwrite) or ""))
        resume_from = Path(prepared) if prepared else None
        device = self._dist.resolve_device(cfg.device, resolve_device)
        precision = resolve_precision(cfg.precision, device)
        if device.type == "cuda" and precision == "fp32":
            # fp32 on TF32 tensor cores (cuDNN convolutions already default to it).
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(cfg.seed)
        model.build(device)
        self._dist.after_build(model.networks(), cfg.seed)
        # Before a checkpoint is loaded: it moves the optimisers' step counters where their
        # fused and capturable kernels want them.
        ctx = make_step_context(model, cfg, device, precision, self._dist)
        if resume_from is not None:
            self._restore(resume_from, ctx)
        if self._dist.is_main:
            self._write_config(device, precision, resumed=resume_from is not None)
        dataset = self._dataset()
        baselines = self._setup_metrics() if self._dist.is_main else {}
        for net in model.networks().values():
            net.train()
        tqdm.write(f"restorekit: training {type(model).name} on {device}"
                   f" in {precision}: {len(dataset)} crops per epoch, "
                   f"batch {cfg.batch_size}, {model.num_epochs()} epochs -> {self.run_dir}")
        if self._dist.active:
            tqdm.write(self._dist.describe(cfg.batch_size))
        started = time.monotonic()
        with self._interrupt:
            try:
                stopped = self._train_epochs(dataset, ctx, device, started)
            except KeyboardInterrupt:
                stopped = "interrupted"
                if self._in_step and ctx.updates > 0:
                    where = self.checkpoint or "none saved yet"
                    tqdm.write(f"restorekit: interrupted in the middle of step {self.step + 1}; "
                               f"its partial update is not saved (last checkpoint: {where})")
                else:
                    self._save(ctx)
        report = self._report()
        if stopped != "completed":
            tqdm.write(f"restorekit: stopped ({stopped}) at epoch {self.epoch + 1}, step "
                       f"{self.step}; checkpoint {self.checkpoint}; continue with --resume")
        elif self.last_metrics and baselines:
            from restorekit import evaluate

            rows = {type(model).name: self.last_metrics, **baselines}
            tqdm.write(evaluate.format_table(rows, self.metrics))
        return TrainResult(run_dir=self.run_dir, epoch=self.epoch, step=self.step,
                           stopped=stopped, metrics=dict(self.last_metrics),
                           best_psnr=self.best_psnr, checkpoint=self.checkpoint, report=report)


def train(model: TrainableModel, *, train_pairs: Any, test_pairs: Any, run_dir: Path,
          registry: Registry, resume: bool = False, overwrite: bool = False,
          data_desc: str = "", extra_config: dict[str, Any] | None = None,
          metrics: Sequence[Metric] | None = None,
          on_evaluate: Callable[[int, int, dict[str, float]], None] | None = None,
          ) -> TrainResult:
    """Train ``model`` (options from ``model.options``, a :class:`TrainConfig`) into ``run_dir``.

    ``train_pairs``/``test_pairs`` are ``restorekit.data`` PairSets; ``registry`` (e.g.
    ``restorekit.plugins.get_registry()``) gives the metrics and the classic baselines'
    preprocessors. A non-empty ``run_dir`` is refused unless ``resume`` (continue from its
    latest checkpoint, bit-exactly on CPU; see also :func:`restorekit.engine.resume`) or
    ``overwrite`` (clear it). ``metrics`` defaults to
    ``restorekit.evaluate.default_metrics(registry)``: PSNR, SSIM, CIEDE2000 and every
    plugin metric. Raises ``TrainingError`` on a non-finite loss.
    ``on_evaluate(epoch, step, metrics)`` is called after each evaluation (of
    ``test_pairs``); an exception it raises stops training and propagates.
    """
    trainer = Trainer(model, train_pairs=train_pairs, test_pairs=test_pairs,
                      run_dir=Path(run_dir), registry=registry, resume=resume,
                      overwrite=overwrite, data_desc=data_desc, extra_config=extra_config,
                      metrics=metrics, on_evaluate=on_evaluate)
    try:
        return trainer.run()
    except Exception as exc:  # under torchrun: a peer's failure becomes one line naming it
        reported = trainer._dist.failure(exc, trainer.epoch, trainer.step, trainer.checkpoint)
        if reported is exc:
            raise
        raise reported from None
    finally:
        trainer.close()


__all__ = ["StepContextImpl", "TrainResult", "Trainer", "train"]
