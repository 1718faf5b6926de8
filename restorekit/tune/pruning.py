"""Optuna pruning as a training-loop callback, shaped like Optuna's own pruning callbacks."""

from __future__ import annotations

import math
from typing import Any

from restorekit.engine import Callback, Trainer
from restorekit.errors import PluginError


class PruningCallback(Callback):
    """After each evaluation: ``trial.report(value, epoch)`` of ``metric``, then stop the
    trial (``optuna.TrialPruned``) when ``trial.should_prune()``, as
    ``optuna_integration``'s PyTorch Lightning and Keras callbacks do. The evaluation (on
    the validation split) is kept as the trial's ``val`` attribute: its record, with the
    intervals and the per-image values (:meth:`restorekit.evaluate.Evaluation.record`).
    An empty ``metric`` (it failed, see :class:`restorekit.evaluate.Evaluation`) fails the
    trial with the reason."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_evaluate(self, trainer: Trainer, label: int, results: dict[str, float]) -> None:
        import optuna

        failed = getattr(results, "failed", {})
        if self.metric in failed:  # the trial fails with the reason
            raise PluginError(failed[self.metric])
        value = results.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, label)
        record = getattr(results, "record", None)
        self.trial.set_user_attr("val", record() if record is not None else dict(results))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {label} (step {trainer.state.step}) "
                                     f"with {self.metric} {value:.4f}")
