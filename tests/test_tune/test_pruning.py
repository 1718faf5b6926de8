"""The study's pruning is a training-loop callback shaped like Optuna's pruning callbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")

from restorekit.tune.pruning import PruningCallback  # noqa: E402


def test_reports_each_evaluation_then_prunes_when_the_pruner_says_so() -> None:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=10.0))
    trial = study.ask()
    callback = PruningCallback(trial, "psnr")
    trainer = SimpleNamespace(state=SimpleNamespace(step=30))
    callback.on_evaluate(trainer, 1, {"psnr": float("nan"), "ssim": 0.5})  # not reported
    callback.on_evaluate(trainer, 1, {"psnr": 12.0, "ssim": 0.5})
    with pytest.raises(optuna.TrialPruned, match=r"^pruned at epoch 2 \(step 30\) with psnr "
                                                  r"9\.0000$"):
        callback.on_evaluate(trainer, 2, {"psnr": 9.0, "ssim": 0.4})
    frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert frozen.intermediate_values == {1: 12.0, 2: 9.0}
    assert frozen.user_attrs["val"] == {"psnr": 9.0, "ssim": 0.4}
