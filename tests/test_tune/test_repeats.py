"""``restorekit tune --repeats``: paired repeats, the verdict line, the ablation with seeds,
the classic baselines and the report (tiny CPU trials)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from scipy import stats as scipy_stats

from restorekit.cli import main
from restorekit.tune import repeats

NUMBER = r"-?\d+\.\d\d"


def _load(studies: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{studies / name / 'study.db'}")


def _config(record: dict) -> dict:
    return json.loads((Path(record["run"]) / "config.json").read_text())


def test_repeats_give_paired_intervals_and_a_verdict_on_validation_and_test(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    studies = tmp_path / "studies"
    argv = tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "2",
                     "--repeats", "2", "--repeat-top", "1")
    train, calls = repeats.TrainJob.train, []

    def interrupted_second_repeat(self, model, run, **kwargs):
        if run.path.parent.name == "repeats":
            calls.append(run.path.name)
            if len(calls) == 2:
                raise KeyboardInterrupt  # Ctrl-C during the second repeat
        return train(self, model, run, **kwargs)

    monkeypatch.setattr(repeats.TrainJob, "train", interrupted_second_repeat)
    assert main(argv) == 130
    assert "the finished repeats are stored. Run the same command to continue" in \
        capsys.readouterr().err
    stored = repeats.repeats_of(_load(studies, "pix2pixhd"))
    assert len(stored) == 1 and "test" not in next(iter(stored.values()))
    monkeypatch.setattr(repeats.TrainJob, "train", train)

    assert main(argv) == 0  # the same command trains the three missing repeats
    captured = capsys.readouterr()
    assert captured.err.count("tune: repeat of") == 3
    study = _load(studies, "pix2pixhd")
    # Repeats are not trials: --trials counts the search only, the best is a search trial.
    assert len(study.trials) == 2 and study.best_trial.number in (0, 1)
    done = repeats.repeats_of(study)
    assert len(done) == 4 and all("val" in r for r in done.values())
    seeds = study.user_attrs["repeats"]["seeds"]
    assert len(seeds) == 2 and seeds == repeats.repeat_seeds(0, 2)  # from --seed 0
    for t in study.trials:  # paired: the same seeds for both, only the seed changed
        assert sorted(r["seed"] for r in done.values() if r["trial"] == t.number) == \
            sorted(seeds)
        for r in done.values():
            if r["trial"] == t.number:
                options = _config(r)["options"]
                # What the trial trained with (its limits too), another seed.
                assert options == {**t.user_attrs["trial_options"], "seed": r["seed"]}
                assert Path(r["run"]).parent == studies / "pix2pixhd" / "repeats"
    # The test split only after every repeat was trained, once per repeat.
    err = captured.err
    assert err.rindex("tune: repeat of") < err.index("tune: repeats: the test split")
    assert all("test" in r for r in done.values())  # winner and preset: both configurations

    lines = [x for x in captured.out.splitlines() if x.startswith("verdict: ")]
    assert len(lines) == 1
    line = lines[0]
    assert re.fullmatch(
        rf"verdict: trial 1 (beats the preset by |does not beat the preset: )({NUMBER}) dB "
        rf"PSNR \(95 % CI ({NUMBER}) to ({NUMBER}), t over 2 seeds\) on validation, "
        rf"({NUMBER}) \(({NUMBER}) to ({NUMBER}), t over 2 seeds\) on test: "
        r"(.*significant.*)", line), line
    # The numbers by hand: per-seed differences trial 1 - preset, t with 1 degree of freedom.
    numbers = [float(x) for x in re.findall(NUMBER, line.split(":", 1)[1])[:6]]
    for split, (mean, low, high) in (("val", numbers[:3]), ("test", numbers[3:])):
        diffs = [done[f"0001-s{s}"][split]["mean"]["psnr"]
                 - done[f"0000-s{s}"][split]["mean"]["psnr"] for s in seeds]
        half = scipy_stats.t.ppf(0.975, 1) * abs(diffs[0] - diffs[1]) / 2
        centre = sum(diffs) / 2
        assert (mean, low, high) == pytest.approx((centre, centre - half, centre + half),
                                                  abs=0.006)
    assert "validation" in line and "on test" in line
    assert "repeats on the validation split:" in captured.out
    assert "repeats on the test split:" in captured.out
    assert "classic baselines on the validation split" in captured.out
    assert "identity" in study.user_attrs["classic"]["test"]

    report = (studies / "pix2pixhd" / "report.html").read_text()
    assert line[len("verdict: "):] in report.replace("&#x27;", "'")
    assert "Classic baselines" in report and "confounded with hyperparameters" in report
    assert ("parameter importances need at least 10 complete trials; this study has 2"
            in report)
    assert not (studies / "pix2pixhd" / "importances.png").exists()
    preset = study.trials[0].user_attrs["config"]["options"]
    assert "the preset (trial 0)" in report and f"<td>{preset['lr']:.4g}</td>" in report

    # The same command again trains nothing and says the same.
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "tune: repeat of" not in again.err
    assert line in again.out.splitlines()


def test_the_ablation_holds_hyperparameters_fixed_with_seeds_and_classic_rows(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv,
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    assert main(tune_argv(tiny_space, studies, "--data", str(lol), "--grid-preprocess",
                          "none;autogamma", "--repeats", "2", "--study", "ablation")) == 0
    out = capsys.readouterr().out
    study = _load(studies, "ablation")
    done = repeats.repeats_of(study)
    seeds = study.user_attrs["repeats"]["seeds"]
    assert len(done) == 4
    by_seed: dict[int, list[dict]] = {}
    for r in done.values():
        by_seed.setdefault(r["seed"], []).append(_config(r))
    assert sorted(by_seed) == sorted(seeds)
    for seed, configs in by_seed.items():  # per seed: the same options, another pipeline
        assert configs[0]["options"] == configs[1]["options"]
        assert configs[0]["options"]["seed"] == seed
        assert sorted(c["preprocess"] for c in configs) == ["", "autogamma"]
    first, second = (by_seed[s][0]["options"] for s in seeds)
    assert {k for k in first if first[k] != second[k]} == {"seed"}
    classic = study.user_attrs["classic"]
    assert list(classic["pipelines"]) == ["none alone", "autogamma alone"]
    # An interval over the 2 test images; the validation split is 1 image: none.
    assert classic["test"]["autogamma alone"]["intervals"]["psnr"] is not None
    assert classic["val"]["autogamma alone"]["intervals"]["psnr"] is None
    assert "none alone" in out and "autogamma alone" in out
    verdict = [x for x in out.splitlines() if x.startswith("verdict: ")]
    assert len(verdict) == 1 and "pipeline autogamma" in verdict[0] and \
        "pipeline none" in verdict[0]
    report = (studies / "ablation" / "report.html").read_text()
    assert "every pipeline with the preset&#x27;s hyperparameters" in report or \
        "every pipeline with the preset's hyperparameters" in report


def test_repeat_options_are_refused_where_they_mean_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "pix2pixhd", "--grid-preprocess", "none;gamma", "--repeats", "2",
                 "--repeat-top", "2", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorekit: error: --repeat-top: only with --repeats K in a "
                          "search") and err.count("\n") == 1
    assert main(["tune", "--report", "x", "--repeats", "2",
                 "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--repeats: give it with the command that runs the study" in err
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()
