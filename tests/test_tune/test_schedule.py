"""``restorekit tune --trial-epochs N``: a short trial is the full schedule, shortened; the
exported best configuration is the full-length one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from restorekit.cli import main
from restorekit.cli.run import read_config_file
from restorekit.engine.rundir import RunDir
from restorekit.tune import schedule
from restorekit.tune import study as study_module
from restorekit_pix2pixhd.model import Pix2PixHD

LR = 1e-3
# A tiny Pix2PixHD whose full schedule is 40 epochs (20 + 20 of decay) of 2 steps each,
# logging the learning rate at every step.
SPACE = """
[model]
only = ["upsample"]
ngf = 4
n_downsample_global = 2
n_blocks_global = 1
ndf = 4
n_layers_D = 2
num_D = 1
crop_size = 32
batch_size = 2
samples_per_epoch = 4
niter = 20
niter_decay = 20
lr = 0.001
fused = false
num_samples = 1
eval_every = 1
log_every = 1
"""


def _study(tmp_path: Path, lol: Path, name: str, *extra: str, space: str = SPACE,
           capsys: pytest.CaptureFixture[str] | None = None) -> optuna.trial.FrozenTrial:
    """Run a one-trial study (the preset) named ``name``; its trial."""
    path = tmp_path / f"{name}.toml"
    path.write_text(space)
    studies = tmp_path / "studies"
    assert main(["tune", "pix2pixhd", "--space", str(path), "--studies-dir", str(studies),
                 "--data", str(lol), "--device", "cpu", "--seed", "0", "--trials", "1",
                 "--study", name, *extra]) == 0
    study = optuna.load_study(study_name=name,
                              storage=f"sqlite:///{studies / name / 'study.db'}")
    return study.trials[0]


def _lrs(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The learning rate of every logged step of the trial's run, in order."""
    return [r["lr"] for r in RunDir(Path(trial.user_attrs["run"])).read_log("losses")]


@pytest.fixture
def warmups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The warm-up (epochs) each study's median pruner was made with."""
    seen: list[int] = []
    pruner = study_module._pruner

    def spy(spec: str, higher: bool, warmup_epochs: int = 1) -> Any:
        seen.append(warmup_epochs)
        return pruner(spec, higher, warmup_epochs)

    monkeypatch.setattr(study_module, "_pruner", spy)
    return seen


def test_a_shortened_trial_reaches_the_decayed_learning_rate_and_exports_the_full_schedule(
        tmp_path: Path, lol: Path, warmups: list[int],
        capsys: pytest.CaptureFixture[str]) -> None:
    # The old way to shorten a trial, --max-steps 4 (2 of the 40 epochs), cuts the schedule:
    # every step runs at the constant learning rate, and the pruner waits 40 / 4 epochs.
    cut = _study(tmp_path, lol, "cut", "--max-steps", "4")
    assert cut.user_attrs["steps"] == 4
    assert _lrs(cut) == [LR] * 4
    assert warmups == [10]

    # --trial-epochs 2: the 40 epochs scaled to 2 (1 + 1 of decay): the last epoch decays.
    short = _study(tmp_path, lol, "short", "--trial-epochs", "2")
    assert short.user_attrs["steps"] == 4
    assert _lrs(short) == [LR, LR, LR / 2, LR / 2]
    assert warmups == [10, 1]  # a quarter of the trial's 2 epochs (at least 1)
    err = capsys.readouterr().err
    assert ("tune: each trial trains 2 epochs, its schedule of 40 epochs scaled to them; "
            "the median pruner waits 1 epoch(s)") in err
    trained = short.user_attrs["trial_options"]
    assert (trained["epochs"], trained["niter"], trained["niter_decay"]) == (2, 1, 1)

    # The exported best is the full-length schedule, without the trial's limits or device.
    out = tmp_path / "best.json"
    studies = str(tmp_path / "studies")
    assert main(["tune", "--export-best", "short", "--studies-dir", studies, "-o",
                 str(out)]) == 0
    assert f"-> {out}: 40 epochs; train it again" in capsys.readouterr().out
    options = json.loads(out.read_text())["options"]
    assert (options["epochs"], options["niter"], options["niter_decay"]) == (40, 20, 20)
    assert options["eval_every"] == 1 and options["lr"] == LR
    assert not {"max_steps", "max_minutes", "device"} & set(options)
    retrained = Pix2PixHD.make_options(None, **read_config_file(out, Pix2PixHD)["options"])
    assert (retrained.epochs, retrained.max_steps, retrained.device) == (40, 0, "auto")

    # --keep-limits: the trial's own options (its length, limits and device).
    assert main(["tune", "--export-best", "cut", "--studies-dir", studies, "-o", str(out),
                 "--keep-limits"]) == 0
    assert "(the trial's own length and limits)" in capsys.readouterr().out
    kept = json.loads(out.read_text())
    assert kept["options"] == json.loads(
        (Path(cut.user_attrs["run"]) / "config.json").read_text())["options"]
    assert (kept["options"]["max_steps"], kept["options"]["device"]) == (4, "cpu")
    assert kept["tune"]["keep_limits"] is True

    assert main(["tune", "--report", "short", "--studies-dir", studies,
                 "--keep-limits"]) == 2
    err = capsys.readouterr().err
    assert err == "restorekit: error: tune: --keep-limits goes with --export-best STUDY\n"


def test_decay_fraction_changes_the_schedule_of_a_shortened_trial(
        tmp_path: Path, lol: Path) -> None:
    # decay_fraction splits the 40 epochs, then the trial scales them to 2 keeping the split:
    # 0.0 -> no decay at all; 0.75 -> 30 of 40 epochs decay -> 2 of 2 (round(1.5) = 2).
    flat = _study(tmp_path, lol, "flat", "--trial-epochs", "2",
                  space=SPACE + "decay_fraction = 0.0\n")
    steep = _study(tmp_path, lol, "steep", "--trial-epochs", "2",
                   space=SPACE + "decay_fraction = 0.75\n")
    assert _lrs(flat) == [LR] * 4
    assert _lrs(steep) == pytest.approx([LR * 2 / 3] * 2 + [LR / 3] * 2)
    assert (steep.user_attrs["trial_options"]["niter"],
            steep.user_attrs["trial_options"]["niter_decay"]) == (0, 2)
    full = steep.user_attrs["config"]["options"]
    assert (full["epochs"], full["niter"], full["niter_decay"]) == (40, 10, 30)


def test_the_quick_presets_schedule_and_evaluations_scale_to_the_trial() -> None:
    values = dict(Pix2PixHD.presets["quick"], select_metric="psnr")
    full, trial = schedule.trial_options(Pix2PixHD, values, 10,
                                         {"max_steps": 7, "device": "cpu"})
    assert (full.epochs, full.niter, full.niter_decay, full.eval_every) == (100, 50, 50, 10)
    assert (trial.epochs, trial.niter, trial.niter_decay, trial.eval_every) == (10, 5, 5, 1)
    assert (full.max_steps, full.device) == (0, "auto")
    assert (trial.max_steps, trial.device) == (7, "cpu")
    full_model = Pix2PixHD(full, None)
    trial_model = Pix2PixHD(trial, None)
    # The trial's last epoch is as far into its decay as the full run's last epoch is.
    assert trial_model.learning_rate(9) == pytest.approx(2e-4 / 6)
    assert full_model.learning_rate(99) == pytest.approx(2e-4 / 51)
    assert full_model.learning_rate(9) == 2e-4  # where --max-steps would have stopped it
    assert schedule.warmup_epochs(100) == 25
    assert schedule.warmup_epochs(100, 10) == 2
    assert schedule.warmup_epochs(100, 2) == 1
    assert "max_steps" not in schedule.exported(trial)
