"""``restorekit tune`` end to end on tiny CPU trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from restorekit.cli import main
from restorekit.data import pairs as pairs_module
from restorekit.tune import study as study_module

ROOT = Path(__file__).resolve().parents[2]


def _load(studies: Path, name: str = "pix2pixhd") -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{studies / name / 'study.db'}")


def test_three_trials_on_the_embedded_default_survive_an_interruption(
        tiny_space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tune_argv,
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    events: list[str] = []
    read = pairs_module.EmbeddedPairs.pair

    def spying_pair(self, i, rng=None):  # every read of an embedded pair, by split
        events.append(self.split)
        return read(self, i, rng)

    final = study_module.final_evaluation

    def spying_final(*args, **kwargs):
        events.append("FINAL EVALUATION")
        return final(*args, **kwargs)

    monkeypatch.setattr(pairs_module.EmbeddedPairs, "pair", spying_pair)
    monkeypatch.setattr(study_module, "final_evaluation", spying_final)
    import restorekit.tune

    monkeypatch.setattr(restorekit.tune, "final_evaluation", spying_final)

    train = study_module.TrainJob.train
    calls = []

    def interrupted_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C twice: out at once
        return train(*args, **kwargs)

    monkeypatch.setattr(study_module.TrainJob, "train", interrupted_second_trial)
    argv = tune_argv(tiny_space, studies, "--trials", "3")
    assert main(argv) == 130
    assert "Run the same command to continue" in capsys.readouterr().err
    study = _load(studies)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert study_module.counted(study) == 1  # the interrupted trial does not count
    assert "test" not in events

    monkeypatch.setattr(study_module.TrainJob, "train", train)
    assert main(argv) == 0  # the same command continues
    out = capsys.readouterr().out
    study = _load(studies)
    assert study_module.counted(study) == 3
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3
    assert study.trials[0].user_attrs["baseline"] is True  # the preset is trial 0
    assert (studies / "pix2pixhd" / "study.db").is_file()
    report = studies / "pix2pixhd" / "report.html"
    assert report.is_file() and "Best: trial" in report.read_text()
    for picture in ("history.png", "intermediate.png", "preprocess.png"):
        assert (studies / "pix2pixhd" / picture).stat().st_size > 1000, picture
    assert not (studies / "pix2pixhd" / "importances.png").exists()  # 3 trials say nothing
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert (Path(t.user_attrs["run"]) / "report.html").is_file()
    assert "test split (evaluated once, after the search)" in out
    assert str(study.best_trial.number) in study.user_attrs["test"]
    # The test split is read only after the final evaluation began, never during the search.
    assert "FINAL EVALUATION" in events and "test" in events
    assert "test" not in events[:events.index("FINAL EVALUATION")]
    assert "train" in events[:events.index("FINAL EVALUATION")]  # validation pairs were read


def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv,
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    assert main(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "1",
                          "--study", "pruned", "--pruner", "threshold:100")) == 0
    pruned = _load(studies, "pruned").trials[0]
    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs["pruned"].startswith("pruned at epoch 1")

    failing = tmp_path / "failing.toml"
    failing.write_text(tiny_space.read_text().replace("crop_size = 32", "crop_size = 4096"))
    assert main(tune_argv(failing, studies, "--data", str(lol), "--trials", "2",
                          "--study", "failed")) == 0
    trials = _load(studies, "failed").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    reason = trials[0].user_attrs["fail_reason"]
    assert "smaller than the 4096x4096 needed" in reason and "\n" not in reason
    err = capsys.readouterr().err
    assert "tune: trial 1 failed:" in err and "Traceback" not in err
    report = (studies / "failed" / "report.html").read_text()
    assert "smaller than the 4096x4096" in report and "FAIL" in report


def test_the_exported_best_configuration_retrains_to_the_same_validation_psnr(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv,
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    assert main(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "2")) == 0
    best = _load(studies).best_trial
    out = tmp_path / "best.json"
    # --keep-limits: the trial's own --max-steps (without it: the full schedule, no limits).
    assert main(["tune", "--export-best", "pix2pixhd", "--studies-dir", str(studies),
                 "-o", str(out), "--keep-limits"]) == 0
    config = json.loads(out.read_text())
    run_config = json.loads((Path(best.user_attrs["run"]) / "config.json").read_text())
    assert config["options"] == run_config["options"]  # the format of a run's config.json
    assert config["preprocess"] == run_config["preprocess"]
    assert config["extra"]["holdout"] == {"fraction": 0.2, "seed": 0}
    capsys.readouterr()
    runs = tmp_path / "runs"
    assert main(["run", "pix2pixhd", "--train", "--config", str(out), "--runs-dir", str(runs),
                 "--name", "again"]) == 0
    assert json.loads((runs / "again" / "config.json").read_text())["extra"]["holdout"]
    capsys.readouterr()
    assert main(["run", "pix2pixhd", "--eval", "--split", "val", "--data", str(lol),
                 "--checkpoint", str(runs / "again"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["rows"]["pix2pixhd"]["psnr"] == pytest.approx(best.value, abs=1e-6)
    assert best.user_attrs["val"]["psnr"] == pytest.approx(best.value)


def test_report_and_export_errors_are_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--report", "nothing", "--studies-dir", str(tmp_path)]) == 2
    assert "no study in" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # asking never creates an empty study
    assert main(["tune", "pix2pixhd"]) == 2
    assert "--trials N" in capsys.readouterr().err
    assert main(["tune", "pix2pixhd", "--trials", "1", "--metric", "nope",
                 "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorekit: error: --metric") and err.count("\n") == 1


# Each test worker's first trial waits (up to 2 minutes) until the other worker has started
# one too, so that both take part however the two processes' start-up times differ; the
# trials themselves are restorekit's own.
BARRIER = """
import os, sys, time
import restorekit.tune.study as study

original = study._objective

def _objective(ctx):
    inner, waited = original(ctx), []

    def objective(trial):
        if not waited:
            waited.append(True)
            trial.set_user_attr("started_by", os.getpid())
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                pids = {t.user_attrs.get("started_by")
                        for t in trial.study.get_trials(deepcopy=False)} - {None}
                if len(pids) >= 2:
                    break
                time.sleep(0.2)
        return inner(trial)

    return objective

study._objective = _objective
from restorekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def worker(argv: list[str]) -> subprocess.Popen:
    """A separate ``restorekit tune`` process (a second worker on the same study)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins" / "pix2pixhd"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", BARRIER, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_two_workers(argv: list[str]) -> list[str]:
    """Two workers on one study, pruning off: which trial a median pruner stops depends on
    how the workers' trials interleave (CI once saw 2 of 5 pruned, 3 complete)."""
    argv = [*argv, "--pruner", "none"]
    procs = [worker(argv), worker(argv)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def check_distinct_trials(study: optuna.Study, trials: int) -> None:
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    seen = [(t.number, t.state.name, t.user_attrs.get("worker"), t.user_attrs.get("fail_reason"))
            for t in study.trials]
    assert trials <= len(done) <= trials + 1, seen  # a worker may finish one more at the end
    runs = [t.user_attrs["run"] for t in done]
    assert len(set(runs)) == len(runs), seen
    assert len({t.user_attrs["worker"] for t in done}) == 2, seen  # both workers ran trials
    assert len({t.number for t in done}) == len(done), seen


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_on_one_file_run_distinct_trials(tiny_space: Path, lol: Path,
                                                     tmp_path: Path, storage: str,
                                                     tune_argv) -> None:
    studies = tmp_path / "studies"
    url = f"sqlite:///{tmp_path / 'shared.db'}" if storage == "sqlite" else \
        f"journal:{tmp_path / 'shared.log'}"
    run_two_workers(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "4",
                              "--storage", url, "--study", "shared"))
    study = study_module.load_study("shared", url, studies)
    check_distinct_trials(study, 4)
