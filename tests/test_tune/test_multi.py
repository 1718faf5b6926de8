"""Multi-objective studies: ``restorekit tune --objectives``, the Pareto front in the report
and the tables, ``--export-best --trial``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from restorekit.cli import main
from restorekit.plugins import get_registry
from restorekit.tune.pareto import MAX_REPORTED, front_note
from restorekit.tune.study import ATTR, reported_trials, row_label, tables


def _load(studies: Path) -> optuna.Study:
    return optuna.load_study(study_name="pix2pixhd",
                             storage=f"sqlite:///{studies / 'pix2pixhd' / 'study.db'}")


def _stored(t: optuna.trial.FrozenTrial, name: str) -> float:
    """An objective's value as the trial recorded it (not Optuna's copy)."""
    return t.user_attrs["step_time"] if name == "step_time" else t.user_attrs["val"][name]


def _non_dominated(trials: list, names: list[str], higher: list[bool]) -> set[int]:
    def beats(a, b) -> bool:  # a at least as good on every objective, better on one
        pairs = [(_stored(a, n) if h else -_stored(a, n), _stored(b, n) if h else -_stored(b, n))
                 for n, h in zip(names, higher, strict=True)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return {t.number for t in trials if not any(beats(o, t) for o in trials)}


@pytest.mark.parametrize(("objectives", "higher", "sampler"), [
    ("psnr,ssim", [True, True], "tpe"),
    ("psnr,step_time", [True, False], "nsga2:2"),
])
def test_a_two_objective_study_reports_its_pareto_front(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv, objectives: str,
        higher: list[bool], sampler: str, capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    assert main(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "3",
                          "--objectives", objectives, "--sampler", sampler)) == 0
    captured = capsys.readouterr()
    assert "pruning is off (Optuna does not prune multi-objective studies)" in captured.err
    study = _load(studies)
    names = objectives.split(",")
    assert study.metric_names == names  # what plain Optuna and optuna-dashboard show
    assert study.directions == [StudyDirection.MAXIMIZE if h else StudyDirection.MINIMIZE
                                for h in higher]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        assert t.values == pytest.approx([_stored(t, n) for n in names])
        # step_time is the training steps' time: less than the trial's seconds per step.
        assert 0 < t.user_attrs["step_time"] < t.user_attrs["seconds"] / t.user_attrs["steps"]
    front = _non_dominated(done, names, higher)

    block = captured.out.split("Pareto front of ")[1].split("\n\n")[0]
    printed = {int(n) for n in re.findall(r"^trial (\d+) \(Pareto front", block, re.M)}
    assert printed == front
    for t in done:
        if t.number in front:
            assert f"trial {t.number} (Pareto front" in block
            assert f"{_stored(t, names[1]):.4f}" in block  # every objective's value
    folder = studies / "pix2pixhd"
    assert (folder / "pareto.png").stat().st_size > 1000
    report = (folder / "report.html").read_text()
    heading = re.search(r"<h2>Pareto front: trials? ([\d, ]+)</h2>", report)
    assert heading and {int(n) for n in heading[1].split(", ")} == front
    assert '<img src="pareto.png"' in report and "Best: trial" not in report
    assert set(study.user_attrs["test"]) == {str(n) for n in front} | {"0"}  # and the preset

    out = tmp_path / "chosen.json"
    argv = ["tune", "--export-best", "pix2pixhd", "--studies-dir", str(studies), "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose a trial with --trial N (the Pareto front: " in err
    assert not out.exists()
    chosen = max(front)
    assert main([*argv, "--trial", str(chosen)]) == 0
    assert f"trial {chosen} (Pareto front" in capsys.readouterr().out
    config = json.loads(out.read_text())
    trial = study.trials[chosen]
    run_config = json.loads((Path(trial.user_attrs["run"]) / "config.json").read_text())
    # The trial's options, without its per-trial limits and device (the full-length export).
    limits = {"max_steps", "max_minutes", "device"}
    assert config["options"] == {k: v for k, v in run_config["options"].items()
                                 if k not in limits}
    assert config["tune"]["trial"] == chosen
    assert config["tune"]["values"] == dict(zip(names, trial.values, strict=True))


def test_objectives_errors_are_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["tune", "pix2pixhd", "--trials", "1", "--studies-dir", str(tmp_path)]
    cases = [
        (["--metric", "ssim", "--objectives", "psnr,ssim"],
         "tune: --metric NAME is one objective, --objectives NAMES several; give one of them"),
        (["--objectives", "psnr,brightness"],
         "--objectives: 'brightness' is a statistic with no better direction; an objective "
         "needs a metric where higher or lower is better"),
        (["--objectives", "psnr"], "--objectives: give two or more objectives"),
        (["--objectives", "step_time,psnr,step_time"], "--objectives: step_time is listed twice"),
        (["--objectives", "psnr,ssim", "--sampler", "cmaes"],
         "--sampler: expected tpe or nsga2[:POPULATION] (got 'cmaes')"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"restorekit: error: {message}") and err.count("\n") == 1, err
    assert main(["tune", "--report", "x", "--trial", "1"]) == 2
    assert "--trial N goes with --export-best" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no study was made


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_long_front_is_capped_for_the_test_split() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["psnr", "step_time"])
    study.set_user_attr(ATTR, {"mode": "search", "preset": "lol"})
    study.add_trial(optuna.trial.create_trial(values=[10.0, 9.0],  # the preset, dominated
                                              user_attrs={"baseline": True}))
    for i in range(7):  # better PSNR costs more time: every one of them is on the front
        study.add_trial(optuna.trial.create_trial(values=[20.0 + i, 1.0 + i]))
    reported = [t.number for t in reported_trials(study)]
    assert MAX_REPORTED == 5 and reported == [7, 6, 5, 4, 3, 0]  # best PSNR first, the preset
    assert "7 trial(s)" in front_note(study) and "its first 5 by psnr and the preset" in \
        front_note(study)
    assert row_label(study, study.trials[0]) == "trial 0 (preset lol)"
    assert row_label(study, study.trials[1]) == "trial 1 (Pareto front)"
    text = tables(study, get_registry())
    assert all(f"trial {n} (Pareto front)" in text for n in range(1, 8))
