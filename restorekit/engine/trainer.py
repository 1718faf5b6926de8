"""The training loop: the steps over the data, and its callbacks called at each event.

The engine owns the loop; a :class:`~restorekit.api.TrainableModel` owns its networks,
optimisers and the loss of one step (``train_step``), in the spirit of BasicSR's split
between training logic and architectures. What a checkpoint holds is the
:class:`~restorekit.engine.state.TrainState`; evaluation, the checkpoint policy, logging
and stopping are :mod:`~restorekit.engine.callbacks`; starting a job (the run folder, the
data, the device, process-wide flags) is :mod:`restorekit.engine.job`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from restorekit.api import TrainableModel
from restorekit.engine import distributed
from restorekit.engine.background import BackgroundLoader
from restorekit.engine.callbacks import Callback
from restorekit.engine.config import TrainConfig
from restorekit.engine.loading import build_model
from restorekit.engine.monitor import CHECK_EVERY, LossMonitor
from restorekit.engine.rundir import RunDir
from restorekit.engine.state import Checkpoint, TrainState, seed_everything
from restorekit.engine.step import check_first_step, make_step_context, step_function
from restorekit.errors import TrainingError, warn


class Trainer:
    """Trains one model (its ``Options`` a :class:`TrainConfig`) on ``dataset`` (training
    crops) into one prepared (locked) run folder; :meth:`run` does the work.

    ``resume_from`` is the checkpoint to continue from (read by the job); ``callbacks``
    are called in order.
    """

    def __init__(self, model: TrainableModel, *, dataset: Any, rundir: RunDir,
                 device: torch.device, precision: str, callbacks: list[Callback],
                 dist: distributed.Distributed | None = None,
                 resume_from: Checkpoint | None = None) -> None:
        self.model = model
        self.cfg: TrainConfig = model.options
        self.dataset = dataset
        self.rundir = rundir
        self.device, self.precision = device, precision
        self.callbacks = list(callbacks)
        self.dist = dist or distributed.current()
        self.resume_from = resume_from
        self.state = TrainState(model, world_size=self.dist.world_size)
        # The loss window in progress and the first non-finite step, on the device (read at
        # the logging cadence and before checkpoints and evaluations).
        self.losses = LossMonitor()
        self.checkpoint: Path | None = None
        self.report: Path | None = None
        self._in_step = False

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def log(self, group: str, record: dict[str, Any]) -> None:
        """A ``losses`` or ``metrics`` record for the loggers (rank 0 alone logs)."""
        if self.dist.is_main:
            self.emit("on_log", group, record)

    def _last_good(self) -> str:
        return (f"the last good checkpoint is {self.checkpoint}" if self.checkpoint
                else "no checkpoint was saved yet")

    def read_losses(self) -> dict[str, float]:
        """The loss window's sums, copied from the device (over ``self.losses.count``
        steps); a one-line ``TrainingError`` naming the first step whose loss was not
        finite, if any was."""
        return self.losses.read(self._last_good())

    def save(self, best: bool = False) -> Path:
        """Checkpoint the state as ``last`` (and ``best``); rank 0 alone writes. Every rank
        first checks the losses since the last read: a non-finite step is never saved."""
        window = self.read_losses()
        if not self.dist.is_main:
            self.checkpoint = self.rundir.checkpoint_path(RunDir.LAST)
            return self.checkpoint
        from restorekit.engine import checkpoint as container

        self.state.window = (window, self.losses.count)
        tensors, meta = self.state.capture()
        bad = container.first_non_finite(tensors)
        if bad is not None:  # never replace the last good checkpoint with a broken one
            raise TrainingError(f"tensor {bad!r} is inf or NaN after step {self.state.step}; "
                                f"training stopped, {self._last_good()}")
        path = self.rundir.checkpoint_path(RunDir.LAST)
        container.write_checkpoint(path, tensors, meta)
        self.rundir.commit_checkpoint(path, best, {"epoch": self.state.epoch,
                                                   "step": self.state.step})
        self.checkpoint = path
        return path

    def close(self) -> None:
        """Release what the callbacks hold open (writers, signal handlers)."""
        for callback in self.callbacks:
            callback.close()

    def _setup(self) -> None:
        model, cfg, state, dist = self.model, self.cfg, self.state, self.dist
        seed_everything(cfg.seed)
        build_model(model, self.device)
        dist.after_build(model.networks(), cfg.seed)
        # Before a checkpoint is loaded: it moves the optimisers' step counters where their
        # fused and capturable kernels want them.
        self.ctx = make_step_context(model, cfg, self.device, self.precision, dist)
        state.scalers = self.ctx.scalers
        state.register_model_parts()
        loaded = self.resume_from
        if loaded is not None:
            state.restore(loaded, dist.position_in_epoch,
                          lambda restore: dist.restore_rng(restore, cfg.seed, state.step))
            self.checkpoint, self.resume_from = loaded.path, None  # the tensors can go
        self.losses = LossMonitor(*state.window)

    # -- the loop ----------------------------------------------------------------------------
    def _loader(self, dataset: Any, device: torch.device) -> tuple[Any, int]:
        """The remaining batches of ``self.epoch`` and the epoch's number of batches."""
        cfg = self.cfg
        n = len(dataset)
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + self.state.epoch)
        order = torch.randperm(n, generator=gen).tolist()
        batches = self.dist.shard(order, cfg.batch_size)  # this rank's part of each batch
        per_epoch = len(batches)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches[self.state.step_in_epoch:], num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            # Its own generator: the loader must not draw from torch's global RNG.
            generator=torch.Generator().manual_seed(cfg.seed))
        return loader, per_epoch

    def _stop_reason(self) -> str | None:
        reasons = (cb.stop_reason(self) for cb in self.callbacks)
        return self.dist.agree_stop(next((r for r in reasons if r is not None), None))

    def _train_epochs(self, dataset: Any) -> str:
        model, state, ctx, device = self.model, self.state, self.ctx, self.device
        num_epochs = model.num_epochs()
        stopped = self._stop_reason()
        step = step_function(model, ctx)
        while stopped is None and state.epoch < num_epochs:
            ctx.epoch = state.epoch
            model.on_epoch_start(state.epoch)
            dataset.set_epoch(state.epoch)
            loader, per_epoch = self._loader(dataset, device)
            self.emit("on_epoch_start", per_epoch)
            # Nothing in this loop reads the device but at the losses' cadence and
            # checkpoints (see restorekit.testing.HostReads): the host queues the next step
            # while this one runs.
            batches = BackgroundLoader(loader, device)
            try:
                for batch in batches:
                    low = batch["low"].to(device, non_blocking=True)
                    high = batch["high"].to(device, non_blocking=True)
                    ctx.step, ctx.updates = state.step, 0
                    self._in_step = True
                    self.dist.sync_buffers(model.networks())
                    self.losses.update(self.dist.reduce_losses(step(low, high)),
                                       state.epoch, state.step)
                    check_first_step(model, ctx)
                    state.step += 1
                    state.step_in_epoch += 1
                    self._in_step = False
                    if state.step % (self.cfg.log_every or CHECK_EVERY) == 0:
                        self.emit("on_losses", self.read_losses(), self.losses.count)
                    self.emit("on_step_end")
                    # Under torchrun the ranks agree every STOP_EVERY steps (a collective);
                    # max_steps, the same step on every rank, stops exactly there.
                    if self.dist.stop_due(state.step) or state.step == self.cfg.max_steps:
                        stopped = self._stop_reason()
                        if stopped:
                            break
                self.read_losses()  # a non-finite step is never evaluated nor saved
            finally:
                batches.close()
                self.emit("on_batches_end")
            if state.step_in_epoch >= per_epoch:  # the epoch is complete
                label = state.epoch + 1
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                self.emit("on_epoch_end", label, state.epoch >= num_epochs, stopped)
            elif stopped:
                self.emit("on_stop", stopped)
        return stopped or "completed"

    def run(self) -> str:
        """Train (or resume) until the epochs are done or a limit/interrupt stops it; why it
        stopped: ``completed``, ``max_steps``, ``max_minutes`` or ``interrupted``."""
        model, cfg, state, dataset = self.model, self.cfg, self.state, self.dataset
        self._setup()
        for net in model.networks().values():
            net.train()
        tqdm.write(f"restorekit: training {type(model).name} on {self.device}"
                   f" in {self.precision}: {len(dataset)} crops per epoch, "
                   f"batch {cfg.batch_size}, {model.num_epochs()} epochs -> {self.rundir}")
        if self.dist.active:
            tqdm.write(self.dist.describe(cfg.batch_size))
        self.emit("on_train_start")
        try:
            stopped = self._train_epochs(dataset)
        except KeyboardInterrupt:
            stopped = "interrupted"
            if self._in_step and self.ctx.updates > 0:
                where = self.checkpoint or "none saved yet"
                warn(f"interrupted in the middle of step {state.step + 1}; its partial update "
                     f"is not saved (last checkpoint: {where})")
            else:
                self.save()
        self.emit("on_train_end", stopped)
        if stopped != "completed":
            tqdm.write(f"restorekit: stopped ({stopped}) at epoch {state.epoch + 1}, step "
                       f"{state.step}; checkpoint {self.checkpoint}; continue with --resume")
        return stopped


__all__ = ["Trainer"]
