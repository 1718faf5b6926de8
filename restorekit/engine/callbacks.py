"""The small objects the training loop calls: evaluation, checkpoints, loggers, stopping.

:class:`~restorekit.engine.trainer.Trainer` runs the steps; at each event it calls every
callback's hook, in the order of its list (each hook does nothing by default):

* ``on_train_start(trainer)``: built, resumed and about to train;
* ``on_epoch_start(trainer, batches)``: an epoch (or its rest, after a resume) begins;
* ``on_step_end(trainer)``: a step is done (its losses are still on the device, unread);
* ``on_losses(trainer, sums, count)``: the loss window's sums over its ``count`` steps, read
  from the device (all finite) every ``log_every`` steps (every
  :data:`~restorekit.engine.monitor.CHECK_EVERY` steps with ``log_every`` 0);
* ``on_batches_end(trainer)``: the epoch's batches are done or stopped (also on errors);
* ``on_epoch_end(trainer, label, last, stopped)``: epoch ``label`` (1-based) is complete;
* ``on_stop(trainer, stopped)``: a limit or an interrupt stopped an epoch halfway;
* ``on_evaluate(trainer, label, results)``: the validation evaluation after epoch ``label``
  (1-based; the epoch in progress when a limit stopped it), a
  :class:`restorekit.evaluate.Evaluation`: the mean metrics, with per-image values and
  intervals (``results.failed``: the metrics left empty, and why; a tuning trial's pruning
  raises here to stop, as Optuna's pruning callbacks do);
* ``on_log(trainer, group, record)``: a ``losses`` or ``metrics`` record (rank 0);
* ``on_samples(trainer, label, grid)``: a sample grid (low | enhanced | ground truth);
* ``on_train_end(trainer, stopped)`` and ``close()`` (always, also after an error).

Every evaluation during training, the ``best`` checkpoint and anything "best" use the
validation pairs (carved from the training pairs); the test pairs are evaluated once, by
:class:`FinalTest`, when training ends.

:meth:`Callback.stop_reason` lets a callback stop training (limits, interrupts). Writing
to the run folder is rank 0's job: the loop calls ``on_log`` and evaluates on rank 0 only.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from restorekit.api import AnyMetric
from restorekit.engine.report import write_report
from restorekit.engine.state import Best
from restorekit.errors import UsageError, warn
from restorekit.plugins import Registry

if TYPE_CHECKING:
    from restorekit.engine.trainer import Trainer
    from restorekit.evaluate import Evaluation

SAMPLE_HEIGHT = 256
"""Sample grid cells are downscaled to at most this many pixels high."""

LIMITS = ("max_steps", "max_minutes")


class Callback:
    """Hooks the training loop calls (see the module's docstring); all optional."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, batches: int) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_losses(self, trainer: Trainer, sums: dict[str, float], count: int) -> None: ...

    def on_batches_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, label: int, last: bool,
                     stopped: str | None) -> None: ...

    def on_stop(self, trainer: Trainer, stopped: str) -> None: ...

    def on_evaluate(self, trainer: Trainer, label: int, results: dict[str, float]) -> None:
        ...

    def on_log(self, trainer: Trainer, group: str, record: dict[str, Any]) -> None: ...

    def on_samples(self, trainer: Trainer, label: int, grid: np.ndarray) -> None: ...

    def on_train_end(self, trainer: Trainer, stopped: str) -> None: ...

    def stop_reason(self, trainer: Trainer) -> str | None:
        """Why training should stop now (``max_steps``, ``interrupted``, ...), or None."""
        return None

    def close(self) -> None:
        """Release what the callback holds (a writer, a signal handler)."""


# -- evaluation and samples ----------------------------------------------------------------------
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


def select_metric(name: str, metrics: Sequence[AnyMetric],
                  known: Sequence[str] | None = None) -> AnyMetric:
    """The metric ``--select-metric`` names among ``metrics`` ("": psnr if there, else the
    first with a better direction); a one-line ``UsageError`` when it is unknown (not in
    ``known``, the registered names, where given), not evaluated, or a statistic with no
    better direction (mean brightness, say)."""
    by_name = {m.name: m for m in metrics}
    if name and name not in by_name and known is not None and name not in known:
        raise UsageError(f"--select-metric: unknown metric {name!r} (known: "
                         f"{', '.join(sorted(known))})")
    ranked = [m.name for m in metrics if m.higher_is_better is not None]
    if not name:
        if not ranked:
            raise UsageError(f"--metrics: none of {', '.join(by_name)} has a better "
                             f"direction to choose the best checkpoint by; add one (psnr)")
        name = "psnr" if "psnr" in ranked else ranked[0]
    if name not in by_name:
        raise UsageError(f"--select-metric: {name!r} is not evaluated (metrics: "
                         f"{', '.join(by_name)}); add it to --metrics")
    if name not in ranked:
        raise UsageError(f"--select-metric: {name!r} is a statistic with no better direction; "
                         f"choose one of {', '.join(ranked) or 'psnr (add it to --metrics)'}")
    return by_name[name]


def run_model(trainer: Trainer, pairs: Any, metrics: Sequence[AnyMetric], count: int = 0,
              desc: str = "evaluating") -> tuple[Any, list[list[np.ndarray]]]:
    """The trainer's model evaluated on ``pairs`` (networks in eval mode, training's RNG
    untouched): the :class:`restorekit.evaluate.Evaluation` and the first ``count``
    ``[low, output, ground truth]`` rows (for sample grids)."""
    from restorekit import evaluate

    rows: list[list[np.ndarray]] = []

    def keep(i: int, low: np.ndarray, out: np.ndarray, high: np.ndarray) -> None:
        if i < count:
            rows.append([low, out, high])

    model = trainer.model
    modes = {m: m.training for net in model.networks().values() for m in net.modules()}
    try:
        with _preserved_rng():
            for net in model.networks().values():
                net.eval()
            results = evaluate.evaluate(pairs, model.enhance, metrics, desc=desc,
                                        on_output=keep)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return results, rows


def count_pairs(n: int) -> str:
    """``1 pair``, ``3 pairs``."""
    return f"{n} pair" + ("" if n == 1 else "s")


class Evaluation(Callback):
    """Evaluates the validation ``pairs`` with ``metrics`` every ``eval_every`` epochs, at
    the end and when a limit stops training (nothing without pairs or metrics); keeps the
    best-by-metric record (``--select-metric``), which picks ``checkpoints/best``; writes
    sample grids from the evaluation's own first outputs. Rank 0 only.

    ``baselines`` (the identity and classic rows of ``pairs``) are computed once per run
    folder and printed beside the final metrics. Each evaluation's record in
    ``metrics.jsonl`` (``"split": "val"``), like each row of ``baselines.json``, holds the
    means, their 95 % bootstrap intervals and the per-image values
    (:meth:`restorekit.evaluate.Evaluation.record`).
    """

    def __init__(self, pairs: Any, metrics: Sequence[AnyMetric], registry: Registry,
                 split: str = "val") -> None:
        self.pairs = pairs
        self.metrics = list(metrics)
        self.registry = registry
        self.split = split
        self.baselines: dict[str, dict[str, Any]] = {}
        self.last: dict[str, Any] | None = None  # the latest evaluation's record

    def active(self, trainer: Trainer) -> bool:
        return trainer.dist.is_main and bool(self.pairs) and bool(self.metrics)

    def on_train_start(self, trainer: Trainer) -> None:
        from restorekit import evaluate

        if not self.active(trainer):
            return
        state = trainer.state
        metric = select_metric(trainer.cfg.select_metric, self.metrics)
        if state.best is None or state.best.metric != metric.name:
            state.best = Best(metric.name, metric.higher_is_better)
        stored = trainer.rundir.read_baselines()
        if stored is not None and all(m.name in row for row in stored.values()
                                      for m in self.metrics):
            self.baselines = stored
            return
        what = getattr(self.pairs, "describe", lambda: "the evaluation pairs")()
        tqdm.write(f"restorekit: computing the identity and classic baselines on {what}")
        baselines = evaluate.classic_baselines(self.pairs, self.metrics, self.registry)
        self.baselines = {k: row.record() for k, row in baselines.items()}
        trainer.rundir.write_baselines(self.baselines)

    def on_epoch_end(self, trainer: Trainer, label: int, last: bool,
                     stopped: str | None) -> None:
        every = trainer.cfg.eval_every
        if self.active(trainer) and ((every > 0 and label % every == 0) or last
                                     or stopped in LIMITS):
            self.evaluate(trainer, label)

    def on_stop(self, trainer: Trainer, stopped: str) -> None:
        if self.active(trainer) and stopped != "interrupted":
            self.evaluate(trainer, trainer.state.epoch + 1)

    def evaluate(self, trainer: Trainer, label: int) -> Any:
        """Evaluate, update the best record, log, write samples; the
        :class:`restorekit.evaluate.Evaluation`."""
        state = trainer.state
        count = min(trainer.cfg.num_samples, len(self.pairs))
        results, rows = run_model(trainer, self.pairs, self.metrics, count,
                                  desc=f"evaluating ({SPLITS.get(self.split, self.split)})")
        self.last = results.record()
        state.metrics = {k: float(v) for k, v in results.items()}
        if state.best is not None and state.best.metric in results.failed:
            warn(f"no checkpoint is chosen as the best by {state.best.metric} (--select-metric) "
                 f"while it is empty: {results.failed[state.best.metric]}", once=True)
        if state.best is not None and state.best.improves(state.metrics.get(state.best.metric)):
            state.best.value, state.best.step = state.metrics[state.best.metric], state.step
        trainer.log("metrics", {"epoch": label, "step": state.step, "split": self.split,
                                **self.last})
        if rows:
            from restorekit.data import write_image

            grid = sample_grid(rows)
            write_image(trainer.rundir.sample_path(label), grid)
            trainer.emit("on_samples", label, grid)
        trainer.emit("on_evaluate", label, results)
        return results

    def on_train_end(self, trainer: Trainer, stopped: str) -> None:
        from restorekit import evaluate

        if stopped == "completed" and trainer.state.metrics and self.baselines:
            rows = {type(trainer.model).name: self.last or trainer.state.metrics,
                    **self.baselines}
            tqdm.write(f"{SPLITS.get(self.split, self.split)} split "
                       f"({count_pairs(len(self.pairs))}), last evaluation:")
            tqdm.write(evaluate.format_table(rows, self.metrics))


SPLITS = {"val": "validation", "test": "test", "train": "training"}
"""What messages call each split."""


class FinalTest(Callback):
    """The final result: when training ends (completed or a limit reached; not after an
    interrupt), the test ``pairs`` are evaluated once, with the last checkpoint and with
    the selected one (``checkpoints/best``, chosen on the validation split; none with no
    validation split), beside the identity and classic baselines on the same pairs.
    Written to the run folder's ``test.json`` (:meth:`RunDir.write_final`), printed and
    kept as ``record``: ``{"split": "test", "data", "pairs", "stopped", "selection"`` (see
    :func:`restorekit.engine.report.selection`), ``"results": {"last", "best"}`` (each an
    evaluation's record with its ``epoch`` and ``step``), ``"baselines"}``. Nothing else
    reads the test pairs. Rank 0 only."""

    def __init__(self, pairs: Any, metrics: Sequence[AnyMetric], registry: Registry) -> None:
        self.pairs = pairs
        self.metrics = list(metrics)
        self.registry = registry
        self.record: dict[str, Any] | None = None

    def on_train_end(self, trainer: Trainer, stopped: str) -> None:
        from restorekit import evaluate
        from restorekit.engine.report import selection
        from restorekit.engine.rundir import RunDir
        from restorekit.engine.state import load, restore_model

        if stopped == "interrupted" or not trainer.dist.is_main or not self.pairs \
                or not self.metrics:
            return
        state, run = trainer.state, trainer.rundir
        chosen = selection(run)
        epoch = state.epoch + (1 if state.step_in_epoch else 0)
        last, _ = run_model(trainer, self.pairs, self.metrics, desc="test, last checkpoint")
        results = {"last": {"epoch": epoch, "step": state.step, **last.record()}}
        rows = {f"last checkpoint (epoch {epoch})": last}
        best = run.checkpoint_path(RunDir.BEST)
        if chosen and chosen.get("step") is not None and best.is_file():
            if chosen["step"] == state.step:  # the last checkpoint is the best one
                tested = last
            else:
                restore_model(load(best), trainer.model)
                try:
                    tested, _ = run_model(trainer, self.pairs, self.metrics,
                                          desc="test, best checkpoint")
                finally:  # the model as training left it
                    if trainer.checkpoint is not None:
                        restore_model(load(trainer.checkpoint), trainer.model)
            results["best"] = {"epoch": chosen.get("epoch"), "step": chosen["step"],
                               **tested.record()}
            rows[f"best checkpoint (epoch {chosen.get('epoch')})"] = tested
        baselines = evaluate.classic_baselines(self.pairs, self.metrics, self.registry)
        rows.update(baselines)
        self.record = {
            "split": "test", "data": getattr(self.pairs, "describe", lambda: "")(),
            "pairs": len(self.pairs), "stopped": stopped, "selection": chosen,
            "results": results,
            "baselines": {k: row.record() for k, row in baselines.items()}}
        run.write_final(self.record)
        tqdm.write(f"test split ({count_pairs(len(self.pairs))}), evaluated once after "
                   f"training:")
        tqdm.write(evaluate.format_table(rows, self.metrics))


def just_best(trainer: Trainer) -> bool:
    """Whether the state at this step is the best so far (evaluated at this step)."""
    best = trainer.state.best
    return best is not None and best.value is not None and best.step == trainer.state.step


# -- checkpoints and the report ------------------------------------------------------------------
class Checkpointing(Callback):
    """When to save: every ``every`` steps (0: never mid-epoch), at every epoch's end and
    when training stops; the save after a new best also becomes ``best``."""

    def __init__(self, every: int = 0) -> None:
        self.every = every

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every > 0 and trainer.state.step % self.every == 0:
            trainer.save()

    def on_epoch_end(self, trainer: Trainer, label: int, last: bool,
                     stopped: str | None) -> None:
        trainer.save(best=just_best(trainer))

    def on_stop(self, trainer: Trainer, stopped: str) -> None:
        trainer.save(best=just_best(trainer))


class Report(Callback):
    """``report.html`` after a new best, after the last epoch and when training ends."""

    def __init__(self, metrics: Sequence[AnyMetric]) -> None:
        self.higher = {m.name: m.higher_is_better for m in metrics}

    def write(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            trainer.report = write_report(trainer.rundir, self.higher)

    def on_epoch_end(self, trainer: Trainer, label: int, last: bool,
                     stopped: str | None) -> None:
        if last or just_best(trainer):
            self.write(trainer)

    def on_train_end(self, trainer: Trainer, stopped: str) -> None:
        self.write(trainer)


# -- loggers -------------------------------------------------------------------------------------
class LossLog(Callback):
    """Averages the loss terms over windows of ``log_every`` steps and logs each window
    (with the learning rates) as a ``losses`` record. The window is summed on the device
    (``trainer.losses``); the one in progress is part of the training state (a resumed
    run's first record averages the whole window)."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def on_epoch_start(self, trainer: Trainer, batches: int) -> None:
        if trainer.state.step_in_epoch == 0:
            trainer.losses.reset()

    def on_losses(self, trainer: Trainer, sums: dict[str, float], count: int) -> None:
        if self.log_every > 0 and trainer.state.step % self.log_every == 0:
            self._log_losses(trainer, sums, count)
            trainer.losses.reset()

    def _log_losses(self, trainer: Trainer, sums: dict[str, float], count: int) -> None:
        if not trainer.dist.is_main:
            return
        record: dict[str, Any] = {"epoch": trainer.state.epoch + 1, "step": trainer.state.step}
        record.update({k: v / count for k, v in sums.items()})
        lrs = {name: float(opt.param_groups[0]["lr"])
               for name, opt in trainer.model.optimizers().items()}
        if lrs:
            record["lr"] = next(iter(lrs.values()))
            if len(lrs) > 1:
                record.update({f"lr_{name}": lr for name, lr in lrs.items()})
        trainer.log("losses", record)


class JsonlLog(Callback):
    """``losses.jsonl`` and ``metrics.jsonl`` in the run folder."""

    def on_log(self, trainer: Trainer, group: str, record: dict[str, Any]) -> None:
        trainer.rundir.log(group, record)


class TensorBoard(Callback):
    """``--tensorboard``: the same records and the sample grids as TensorBoard events."""

    def __init__(self) -> None:
        self._board: Any = None

    def _writer(self, trainer: Trainer) -> Any:
        if self._board is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UsageError("--tensorboard needs the tensorboard package: pip install "
                                 "'restorekit[tensorboard]'") from None
            self._board = SummaryWriter(log_dir=str(trainer.rundir.tensorboard),
                                        purge_step=trainer.state.step or None)
        return self._board

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            self._writer(trainer)  # a missing package is reported before the first step

    def on_log(self, trainer: Trainer, group: str, record: dict[str, Any]) -> None:
        board = self._writer(trainer)
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                board.add_scalar(f"{group}/{key}", value, trainer.state.step)
        board.flush()

    def on_samples(self, trainer: Trainer, label: int, grid: np.ndarray) -> None:
        board = self._writer(trainer)
        board.add_image("samples/grid", grid, trainer.state.step, dataformats="HWC")
        board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


class ProgressBar(Callback):
    """A tqdm bar per epoch with the loss window's averages; one line per evaluation."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_epoch_start(self, trainer: Trainer, batches: int) -> None:
        state = trainer.state
        self._bar = tqdm(total=batches, initial=state.step_in_epoch, dynamic_ncols=True,
                         desc=f"epoch {state.epoch + 1}/{trainer.model.num_epochs()}",
                         leave=False)

    def on_step_end(self, trainer: Trainer) -> None:
        self._bar.update(1)

    def on_losses(self, trainer: Trainer, sums: dict[str, float], count: int) -> None:
        # Called before LossLog: the window's averages, as often as the losses are read.
        self._bar.set_postfix({k: f"{v / count:.4g}" for k, v in sums.items()})

    def on_batches_end(self, trainer: Trainer) -> None:
        self.close()

    def on_evaluate(self, trainer: Trainer, label: int, results: dict[str, float]) -> None:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
        best = trainer.state.best
        shown = f" (best {best.metric} {best.value:.4f})" \
            if best is not None and best.value is not None else ""
        tqdm.write(f"epoch {label} step {trainer.state.step}: validation {summary}{shown}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# -- stopping ------------------------------------------------------------------------------------
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
            self._installed = False


class StopPolicy(Callback):
    """Stops at ``max_steps`` steps in total, after ``max_minutes`` of training, or after
    the step a first Ctrl-C interrupted (0: no limit)."""

    def __init__(self, max_steps: int = 0, max_minutes: float = 0.0) -> None:
        self.max_steps = max_steps
        self.max_minutes = max_minutes
        self._interrupt = _DeferredInterrupt()
        self._started = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        self._started = time.monotonic()
        self._interrupt.__enter__()

    def stop_reason(self, trainer: Trainer) -> str | None:
        if self._interrupt.requested:
            return "interrupted"
        if self.max_steps and trainer.state.step >= self.max_steps:
            return "max_steps"
        if self.max_minutes and time.monotonic() - self._started >= self.max_minutes * 60:
            return "max_minutes"
        return None

    def close(self) -> None:
        self._interrupt.__exit__()


def default_callbacks(cfg: Any, eval_pairs: Any, metrics: Sequence[AnyMetric] | None,
                      registry: Registry, test_pairs: Any = None) -> list[Callback]:
    """The loop's usual callbacks for ``cfg`` (a ``TrainConfig``): loggers, evaluation of
    ``eval_pairs`` (the validation pairs, which pick the best checkpoint), the final
    evaluation of ``test_pairs`` (None: none), checkpoints, report, limits."""
    from restorekit import evaluate

    metrics = list(metrics) if metrics is not None else evaluate.default_metrics(registry)
    found: list[Callback] = [ProgressBar(), LossLog(cfg.log_every), JsonlLog()]
    if cfg.tensorboard:
        found.append(TensorBoard())
    return found + [Evaluation(eval_pairs, metrics, registry),
                    Checkpointing(cfg.checkpoint_every), FinalTest(test_pairs, metrics, registry),
                    Report(metrics),
                    StopPolicy(cfg.max_steps, cfg.max_minutes)]


__all__ = ["Callback", "Checkpointing", "Evaluation", "FinalTest", "JsonlLog", "LossLog",
           "ProgressBar", "Report", "StopPolicy", "TensorBoard", "default_callbacks", "sample_grid"]
