"""Metrics in studies: the report's score table shows both LOL protocols (plain and
GT-mean); a statistic with no better direction is no objective."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

from restorekit.errors import UsageError  # noqa: E402
from restorekit.plugins import get_registry  # noqa: E402
from restorekit.tune.report import _scores_table  # noqa: E402
from restorekit.tune.study import ATTR, TEST_ATTR, _metric  # noqa: E402


def test_scores_table_has_plain_and_gt_mean_columns() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ATTR, {"mode": "search", "higher_is_better": True})
    scores = {"psnr": 20.5, "ssim": 0.7, "psnr_gtmean": 24.25, "ssim_gtmean": 0.75,
              "ciede2000": 9.0}
    study.add_trial(optuna.trial.create_trial(value=20.5, user_attrs={"val": scores}))
    study.set_user_attr(TEST_ATTR, {"0": {**scores, "psnr_gtmean": 23.75}})
    table = _scores_table(study)
    for column in ("val psnr", "val psnr_gtmean", "val ssim_gtmean", "test psnr_gtmean"):
        assert f"<th>{column}</th>" in table
    assert "<td>24.25</td>" in table and "<td>23.75</td>" in table


def test_a_statistic_is_no_objective() -> None:
    assert _metric(get_registry(), "loe").name == "loe"  # a no-reference metric with a direction
    with pytest.raises(UsageError, match="--metric: 'brightness' is a statistic with no better"):
        _metric(get_registry(), "brightness")
