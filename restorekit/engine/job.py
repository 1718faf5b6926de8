"""One way to start a training job, for the CLI, resume, the study and the Python API.

A :class:`TrainJob` says what a job trains on (the data folder or pair sets, the
holdout that makes the validation split, the test split evaluated once at the end, the
metrics, extra callbacks, extra config); its
:meth:`~TrainJob.train` and :meth:`~TrainJob.resume` prepare and lock the run folder,
read the checkpoint to resume from once (rank 0 reads, every rank receives), resolve the
device and precision and set the process-wide flags they need, build the
:class:`~restorekit.engine.trainer.Trainer` and run it. :func:`run_folder` names the run
folder of a new or resumed job (rank 0 decides, so other nodes need not see the runs
folder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from restorekit._version import __version__
from restorekit.api import AnyMetric, TrainableModel
from restorekit.data import Holdout, TrainCrops, open_pairs
from restorekit.engine import distributed
from restorekit.engine.callbacks import Callback, Evaluation, FinalTest, default_callbacks
from restorekit.engine.config import TrainConfig, resolve_device, resolve_precision
from restorekit.engine.rundir import RunDir
from restorekit.engine.state import Best, Checkpoint, capture_options, load_resumable
from restorekit.engine.trainer import Trainer
from restorekit.errors import DataError, UsageError, warn
from restorekit.plugins import Registry

RESUME_OVERRIDABLE = frozenset({"max_steps", "max_minutes", "device", "num_workers",
                                "tensorboard", "precision", "fused_optimizer", "cuda_graph"})
"""Options a resumed run accepts: they change where and how long, not what is trained."""


def run_folder(runs_dir: str | Path, model: str, name: str | None = None, *,
               resume: bool = False, overwrite: bool = False) -> RunDir:
    """The run folder of a job: ``runs_dir/name``; else, to resume, the newest run of
    ``model`` with a checkpoint; else ``runs_dir/model`` with ``overwrite``; else the first
    free ``runs_dir/model[-N]``. Under torchrun rank 0 alone reads ``runs_dir``."""
    if name:
        return RunDir.named(runs_dir, name)
    if overwrite and not resume:
        return RunDir(Path(runs_dir) / model)

    def choose() -> str:
        if not resume:
            return str(RunDir.next_free(runs_dir, model).path)
        found = RunDir.newest(runs_dir, model)
        if found is None:
            raise UsageError(f"--resume: no run of {model} with a checkpoint in {runs_dir}; "
                             f"name one with --name")
        return str(found.path)

    return RunDir(distributed.setup().from_main(choose))


def read_resumable(run: RunDir, dist: distributed.Distributed) -> Checkpoint:
    """The newest usable checkpoint of ``run`` (a locked, prepared run folder), read once by
    rank 0 and received by every rank; an unusable ``last`` falls back to ``best``."""
    held: dict[str, str] = {}

    def read() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        loaded = load_resumable(run.resume_candidates(), warn)
        held["path"] = str(loaded.path)
        return loaded.tensors, loaded.meta

    tensors, meta = dist.read_checkpoint(read)
    return Checkpoint(Path(dist.broadcast_json(held.get("path", ""))), tensors, meta)


@dataclass
class TrainResult:
    """What a training job returns.

    ``stopped`` is ``"completed"``, ``"max_steps"``, ``"max_minutes"`` or
    ``"interrupted"`` (Ctrl-C; continue with ``resume=True``). ``metrics`` are the means
    of the last validation evaluation, ``validation`` its record (with intervals and
    per-image values); ``best`` is the best-by-metric record on the validation split and
    ``best_checkpoint`` its file (None without a validation split or before any
    evaluation). ``test`` is the test split's final evaluation (``test.json``; None when
    interrupted or without test pairs).
    """

    run_dir: Path
    epoch: int
    step: int
    stopped: str
    metrics: dict[str, float] = field(default_factory=dict)
    best: Best | None = None
    checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    report: Path | None = None
    validation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None


class RunFolder(Callback):
    """The run folder's own records at the start: ``config.json`` (``config``), and for a
    resumed run its logs cut back to the checkpoint's step, and a line saying so."""

    def __init__(self, config: dict[str, Any], resumed: Checkpoint | None) -> None:
        self.config = config
        self.resumed = resumed

    def on_train_start(self, trainer: Trainer) -> None:
        loaded, state = self.resumed, trainer.state
        if loaded is not None:
            changed = [k for k, v in self.config["options"].items()
                       if loaded.meta.get("options", {}).get(k, v) != v]
            note = f" (changed options: {', '.join(changed)})" if changed else ""
            tqdm.write(f"restorekit: resuming {trainer.rundir} from {loaded.path.name} at "
                       f"epoch {state.epoch + 1}, step {state.step}{note}")
        if trainer.dist.is_main:
            if loaded is not None:
                trainer.rundir.truncate_logs(state.step)
            trainer.rundir.write_config(self.config, resumed=loaded is not None)


@dataclass
class TrainJob:
    """What a training job trains on and how it is watched.

    ``data`` (a ``--data`` folder; None: the embedded set), ``holdout`` and ``skip_bad``
    open the training pairs without the validation split that ``holdout`` carves from
    them, that validation split (None: no validation, no selection: the last checkpoint
    is the result) and the ``test_split`` (None: none), unless ``train_pairs`` are given
    (then ``eval_pairs`` and ``test_pairs`` too, None for none). The validation pairs are
    evaluated during training and pick the best checkpoint; the test pairs are evaluated
    once, when training ends (:class:`~restorekit.engine.callbacks.FinalTest`).
    ``metrics`` default to ``restorekit.evaluate.default_metrics``; ``callbacks`` run
    after the usual ones; ``extra`` is added to ``config.json``'s ``extra``.
    """

    registry: Registry
    data: str | None = None
    holdout: Holdout | None = None
    skip_bad: bool = False
    train_pairs: Any = None
    eval_pairs: Any = None
    test_pairs: Any = None
    test_split: str | None = "test"
    metrics: Sequence[AnyMetric] | None = None
    callbacks: Sequence[Callback] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    data_desc: str = ""

    def _pairs(self, seed: int) -> tuple[Any, Any, Any]:
        if self.train_pairs is not None:  # the caller's pair sets (None: none)
            return self.train_pairs, self.eval_pairs, self.test_pairs

        def opened(split: str) -> Any:
            return open_pairs(self.data, split, seed=seed, skip_bad=self.skip_bad,
                              holdout=self.holdout)

        if self.holdout is not None:
            count = len(open_pairs(self.data, "train", seed=seed, skip_bad=self.skip_bad))
            if count < 2:
                raise DataError(f"a validation split needs at least 2 training pairs (got "
                                f"{count}); train without one with --val-fraction 0")
        val = opened("val") if self.holdout is not None else None
        return opened("train"), val, opened(self.test_split) if self.test_split else None

    def _config(self, model: TrainableModel, train: Any, val: Any, test: Any,
                device: torch.device, precision: str, world_size: int) -> dict[str, Any]:
        # extra.holdout: the validation split carved from the training pairs (None: none)
        extra: dict[str, Any] = {"data_path": self.data,
                                 "holdout": self.holdout and self.holdout.to_dict()}
        return {
            "model": type(model).name,
            "options": capture_options(model),
            "preprocess": str(model.preprocess),
            "data": self.data_desc or getattr(train, "describe", str)(),
            "train_pairs": len(train),
            "val_pairs": len(val) if val is not None else 0,
            "test_pairs": len(test) if test is not None else 0,
            "restorekit_version": __version__,
            "torch_version": torch.__version__,
            "device": str(device),
            "precision": precision,
            "world_size": world_size,
            "extra": {**extra, **self.extra},
        }

    def train(self, model: TrainableModel, run: RunDir, *, resume: bool = False,
              overwrite: bool = False) -> TrainResult:
        """Train ``model`` into ``run`` (``resume``: from its newest usable checkpoint;
        ``overwrite``: clear it first; a non-empty folder needs one of them)."""
        return self._run(run, lambda loaded: model, resume=resume, overwrite=overwrite)

    def resume(self, run: RunDir, **overrides: Any) -> TrainResult:
        """Continue ``run``: the model, its options and preprocessing from the checkpoint,
        the data from ``config.json``; ``overrides`` only of :data:`RESUME_OVERRIDABLE`
        (``max_steps`` and ``max_minutes`` default to no limit)."""
        from restorekit.engine.loading import model_from_metadata

        fixed = sorted(set(overrides) - RESUME_OVERRIDABLE)
        if fixed:
            named = ", ".join("--" + f.replace("_", "-") for f in fixed)
            raise UsageError(f"--resume continues a run with its stored options; drop "
                             f"{named} (or start a new run)")
        # Under torchrun rank 0 alone reads the run folder (other nodes need not see it).
        stored = distributed.setup().from_main(
            lambda: {"data": run.data_path(),
                     "holdout": run.read_config().get("extra", {}).get("holdout")})
        try:  # a run trained without the validation pairs
            holdout = Holdout.from_dict(stored["holdout"])
        except ValueError as exc:
            raise UsageError(f"{run.config_path}: field 'extra.holdout': {exc}") from None
        job = dataclasses.replace(self, data=stored["data"], holdout=holdout)

        def model_of(loaded: Checkpoint | None) -> TrainableModel:
            assert loaded is not None
            limits = {"max_steps": 0, "max_minutes": 0.0}
            return model_from_metadata(loaded.path, loaded.meta, self.registry,
                                       **{**limits, **overrides})

        return job._run(run, model_of, resume=True, overwrite=False)

    def _run(self, run: RunDir, model_of: Callable[[Checkpoint | None], TrainableModel],
             *, resume: bool, overwrite: bool) -> TrainResult:
        dist = distributed.setup()  # under torchrun: join the process group (once)
        trainer: Trainer | None = None
        try:
            dist.from_main(lambda: run.prepare(resume, overwrite))
            loaded = read_resumable(run, dist) if resume else None
            model = model_of(loaded)
            cfg = model.options
            if not isinstance(cfg, TrainConfig):
                raise UsageError(f"model {type(model).name!r}: its Options must subclass "
                                 f"restorekit.engine.TrainConfig")
            device = dist.resolve_device(cfg.device, resolve_device)
            precision = resolve_precision(cfg.precision, device)
            if device.type == "cuda" and precision == "fp32":
                # fp32 on TF32 tensor cores (cuDNN convolutions already default to it).
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            train, val, test = self._pairs(cfg.seed)
            dataset = TrainCrops(train, cfg.crop_size, samples_per_epoch=cfg.samples_per_epoch,
                                 seed=cfg.seed, preprocess=model.preprocess)
            if len(dataset) == 0:
                raise DataError("no training pairs to train on")
            config = self._config(model, train, val, test, device, precision,
                                  dist.world_size)
            usual = default_callbacks(cfg, val, self.metrics, self.registry, test)
            callbacks = [RunFolder(config, loaded), *usual, *self.callbacks]
            trainer = Trainer(model, dataset=dataset, rundir=run, device=device,
                              precision=precision, callbacks=callbacks, dist=dist,
                              resume_from=loaded)
            stopped = trainer.run()
            state, best = trainer.state, trainer.state.best
            best = best if best is not None and best.value is not None else None
            best_path = run.checkpoint_path(RunDir.BEST)
            evaluation = next(c for c in usual if isinstance(c, Evaluation))
            final = next(c for c in usual if isinstance(c, FinalTest))
            return TrainResult(run_dir=run.path, epoch=state.epoch, step=state.step,
                               stopped=stopped, metrics=dict(state.metrics), best=best,
                               checkpoint=trainer.checkpoint, report=trainer.report,
                               best_checkpoint=best_path if best and best_path.is_file()
                               else None, validation=evaluation.last, test=final.record)
        except Exception as exc:  # under torchrun: a peer's failure becomes one line naming it
            state = trainer.state if trainer is not None else None
            reported = dist.failure(exc, state.epoch if state else 0, state.step if state else 0,
                                    trainer.checkpoint if trainer is not None else None)
            if reported is exc:
                raise
            raise reported from None
        finally:
            if trainer is not None:
                trainer.close()
            run.release()


def train(model: TrainableModel, *, train_pairs: Any, run_dir: Path, test_pairs: Any = None,
          registry: Registry, val_pairs: Any = None, resume: bool = False,
          overwrite: bool = False, data_desc: str = "",
          extra_config: dict[str, Any] | None = None,
          metrics: Sequence[AnyMetric] | None = None, callbacks: Sequence[Callback] = (),
          ) -> TrainResult:
    """Train ``model`` (options from ``model.options``, a :class:`TrainConfig`) into ``run_dir``.

    ``train_pairs``, ``val_pairs`` and ``test_pairs`` are ``restorekit.data`` PairSets (or
    None): the validation pairs (e.g. ``open_pairs(data, "val")``, with ``train_pairs`` the
    training pairs without them: ``open_pairs(data, "train", holdout=Holdout())``) are
    evaluated during training and pick ``checkpoints/best``; the test pairs are evaluated
    once, when training ends, with the last and the best checkpoint (``test.json``,
    ``TrainResult.test``). ``registry`` (e.g.
    ``restorekit.plugins.get_registry()``) gives the metrics and the classic baselines'
    preprocessors. A non-empty ``run_dir`` is refused unless ``resume`` (continue from its
    latest checkpoint, bit-exactly on CPU; see also :func:`restorekit.engine.resume`) or
    ``overwrite`` (clear it). ``metrics`` defaults to
    ``restorekit.evaluate.default_metrics(registry)``: PSNR, SSIM, CIEDE2000 and every
    plugin metric. ``callbacks`` (:class:`~restorekit.engine.callbacks.Callback`) run after
    the usual ones; an exception one raises stops training and propagates. Raises
    ``TrainingError`` on a non-finite loss.
    """
    job = TrainJob(registry, train_pairs=train_pairs, eval_pairs=val_pairs,
                   test_pairs=test_pairs, metrics=metrics, callbacks=callbacks,
                   extra=dict(extra_config or {}), data_desc=data_desc)
    return job.train(model, RunDir(run_dir), resume=resume, overwrite=overwrite)


def resume(run_dir: str | Path, registry: Registry, *, skip_bad: bool = False,
           **overrides: Any) -> TrainResult:
    """Continue the run in ``run_dir`` from its newest usable checkpoint (see
    :meth:`TrainJob.resume`)."""
    return TrainJob(registry, skip_bad=skip_bad).resume(RunDir(run_dir), **overrides)


__all__ = ["RESUME_OVERRIDABLE", "RunFolder", "TrainJob", "TrainResult", "read_resumable",
           "resume", "run_folder", "train"]
