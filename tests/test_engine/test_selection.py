"""Issue 22, item 1: the best checkpoint is chosen on a validation split carved from the
training pairs; the test split is read once, for the final result, when training ends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from restorekit import TrainableModel, hookimpl, testing
from restorekit.cli import main
from restorekit.data import pairs as pairs_module
from restorekit.data import write_image
from restorekit.engine import RunDir, TrainConfig, read_checkpoint
from restorekit.engine import callbacks as callbacks_module
from restorekit.engine import checkpoint as container
from restorekit.engine import state as st


@dataclass
class DimOptions(TrainConfig):
    lr: float = 0.5


class Dim(TrainableModel):
    """One convolution with a large learning rate: its scores move from epoch to epoch."""

    name = "dim"
    description = "one convolution (tests)"
    Options = DimOptions

    def build(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.net = nn.Conv2d(3, 3, 3, padding=1).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.options.lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def train_step(self, low, high, ctx):
        loss = (self.enhance_tensor(low) - high).abs().mean()
        ctx.backward_step(loss, "net")
        return {"l1": loss.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return self.net(low).clamp(0, 1)


class DimPlugin:
    @hookimpl
    def register_models(self, register):
        register(Dim)


FAST = ["--data", "data", "--epochs", "3", "--batch-size", "1", "--crop-size", "16",
        "--samples-per-epoch", "3", "--num-samples", "1", "--device", "cpu",
        "--metrics", "psnr,mae"]


def write_pairs(folder: Path, prefix: str, count: int, size: tuple[int, int] = (24, 24)
                ) -> None:
    rng = np.random.default_rng(len(prefix) + count)
    for i in range(count):
        high = rng.uniform(0.2, 0.9, (*size, 3)).astype(np.float32)
        write_image(folder / "high" / f"{prefix}{i}.png", high)
        write_image(folder / "low" / f"{prefix}{i}.png", high * 0.2)


@pytest.fixture
def dim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """cwd = tmp_path with ``data/train`` (5 pairs p0..p4) and ``data/test`` (2 pairs t0, t1)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    write_pairs(tmp_path / "data" / "train", "p", 5)
    write_pairs(tmp_path / "data" / "test", "t", 2)
    # The classic baselines' six pipelines are not what these tests are about.
    from restorekit import evaluate

    def baselines(pairs, metrics, *_, **__):
        return {"identity": evaluate.evaluate(pairs, None, metrics, progress=False)}

    monkeypatch.setattr(evaluate, "classic_baselines", baselines)
    with testing.isolated(dim=DimPlugin()) as registry:
        yield registry


@pytest.fixture
def test_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every read of a pair of ``data/test``: (its name, whether the final evaluation, and
    nothing else, was running)."""
    reads: list[tuple[str, bool]] = []
    final = {"on": False}
    read, end = pairs_module.FolderPairs.pair, callbacks_module.FinalTest.on_train_end

    def pair(self, i, rng=None):
        if self.root_low.parent.name == "test":
            reads.append((self.names[i], final["on"]))
        return read(self, i, rng)

    def on_train_end(self, trainer, stopped):
        final["on"] = True
        try:
            end(self, trainer, stopped)
        finally:
            final["on"] = False

    monkeypatch.setattr(pairs_module.FolderPairs, "pair", pair)
    monkeypatch.setattr(callbacks_module.FinalTest, "on_train_end", on_train_end)
    return reads


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- selection on validation, test once at the end ---------------------------------------------
def test_selection_never_reads_the_test_split(dim, tmp_path: Path, test_reads,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a plain run evaluated the test split every epoch and kept best.safetensors by
    test PSNR ("best test psnr during training ...")."""
    assert main(["run", "dim", "--train", "--name", "r", *FAST]) == 0
    out = capsys.readouterr().out
    run = RunDir(tmp_path / "runs" / "r")
    # Nothing during training read a test pair; the final evaluation read each of them.
    assert [r for r in test_reads if not r[1]] == []
    assert {name for name, _ in test_reads} == {"t0", "t1"}
    config = run.read_config()
    assert config["extra"]["holdout"] == {"fraction": 0.2, "seed": 0}
    assert (config["train_pairs"], config["val_pairs"], config["test_pairs"]) == (4, 1, 2)
    records = run.read_log("metrics")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {r["split"] for r in records} == {"val"}
    (val_name,) = records[0]["images"]  # the one validation pair, one of the training pairs
    assert Path(val_name).parts[:2] == ("data", "train")
    best = read_checkpoint(run.checkpoint_path("best"))[1]["best"]
    chosen = max(records, key=lambda r: r["psnr"])
    assert (best["metric"], best["step"], best["value"]) == ("psnr", chosen["step"],
                                                            chosen["psnr"])
    line = (f"best checkpoint chosen on the validation split (1 pair) by psnr: epoch "
            f"{chosen['epoch']} (step {chosen['step']}, psnr {chosen['psnr']:.4f})")
    assert line in out
    final = run.read_final()
    assert final is not None and final["split"] == "test" and final["pairs"] == 2
    assert final["selection"]["split"] == "val" and final["selection"]["pairs"] == 1
    assert final["results"]["last"]["step"] == records[-1]["step"]
    assert final["results"]["best"]["epoch"] == chosen["epoch"]
    assert {Path(k).stem for k in final["results"]["best"]["images"]} == {"t0", "t1"}
    tested = final["results"]
    assert (f"test psnr (2 pairs, evaluated once after training): last checkpoint "
            f"{tested['last']['psnr']:.4f}, best checkpoint {tested['best']['psnr']:.4f}"
            in out)
    report = run.report.read_text()
    assert html_text(line) in report
    assert "Test split (final evaluation)" in report and "psnr (validation)" in report


def html_text(text: str) -> str:
    import html

    return html.escape(text)


def test_the_best_row_is_the_best_checkpoint_evaluated_on_test(dim, tmp_path: Path) -> None:
    """The test row of the best checkpoint is that checkpoint's own score, not the last's."""
    from restorekit.data import open_pairs
    from restorekit.engine import load_trained
    from restorekit.evaluate import evaluate

    assert main(["run", "dim", "--train", "--name", "r", *FAST, "--select-metric", "mae"]) == 0
    run = RunDir(tmp_path / "runs" / "r")
    final = run.read_final()
    assert final is not None
    test = open_pairs("data", "test")
    for which in ("last", "best"):
        model = load_trained(run.checkpoint_path(which), dim, device="cpu")
        expected = evaluate(test, model.enhance, model_metrics(dim), progress=False)
        assert final["results"][which]["mae"] == pytest.approx(expected["mae"])


def model_metrics(registry) -> list:
    return registry.metrics("psnr,mae")


def test_select_metric_lower_is_better_picks_the_lowest(dim, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(["run", "dim", "--train", "--name", "m", *FAST, "--select-metric", "mae"]) == 0
    out = capsys.readouterr().out
    run = RunDir(tmp_path / "runs" / "m")
    records = run.read_log("metrics")
    lowest = min(records, key=lambda r: r["mae"])
    assert len({r["mae"] for r in records}) == 3  # the epochs differ
    best = read_checkpoint(run.checkpoint_path("best"))[1]["best"]
    assert best == {"metric": "mae", "higher_is_better": False, "value": lowest["mae"],
                    "step": lowest["step"]}
    assert (f"by mae: epoch {lowest['epoch']} (step {lowest['step']}, mae "
            f"{lowest['mae']:.4f})") in out
    # --best-metric, the old name, is still accepted.
    assert main(["run", "dim", "--train", "--name", "o", *FAST, "--epochs", "1",
                 "--best-metric", "mae"]) == 0
    old = read_checkpoint(RunDir(tmp_path / "runs" / "o").checkpoint_path("best"))[1]
    assert old["best"]["metric"] == "mae" and old["options"]["select_metric"] == "mae"


@pytest.mark.parametrize("name, message", [
    ("brightness", "--select-metric: 'brightness' is not evaluated (metrics: psnr, mae); "
                   "add it to --metrics"),
    ("nope", "--select-metric: unknown metric 'nope' (known: "),
])
def test_a_select_metric_without_direction_or_unknown_is_one_line(
        dim, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        message: str) -> None:
    assert main(["run", "dim", "--train", "--name", "x", *FAST, "--select-metric", name]) == 2
    assert one_error(capsys).startswith(f"restorekit: error: {message}")
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_a_statistic_is_refused_before_training(dim, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "dim", "--train", "--name", "x", *FAST[:-1], "psnr,brightness",
            "--select-metric", "brightness"]
    assert main(argv) == 2
    assert one_error(capsys) == (
        "restorekit: error: --select-metric: 'brightness' is a statistic with no better "
        "direction; choose one of psnr")
    assert not (tmp_path / "runs").exists()


def test_val_fraction_0_means_no_selection(dim, tmp_path: Path, test_reads,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dim", "--train", "--name", "z", *FAST, "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    run = RunDir(tmp_path / "runs" / "z")
    assert not run.checkpoint_path("best").exists()
    assert run.read_log("metrics") == []  # nothing was evaluated during training
    config = run.read_config()
    assert config["extra"]["holdout"] is None and config["train_pairs"] == 5
    final = run.read_final()
    assert final is not None and list(final["results"]) == ["last"]
    assert final["selection"] == {"split": None, "pairs": 0}
    line = ("no validation split (--val-fraction 0): no checkpoint was selected; the result "
            "is the last checkpoint")
    report = run.report.read_text()
    assert line in out and line in report
    assert "Test split (final evaluation)" in report and "No evaluation yet" not in report
    assert (f"test psnr (2 pairs, evaluated once after training): last checkpoint "
            f"{final['results']['last']['psnr']:.4f}\n") in out
    assert [r for r in test_reads if not r[1]] == [] and test_reads


def test_resume_keeps_the_holdout(dim, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dim", "--train", "--name", "h", *FAST, "--val-fraction", "0.5",
                 "--val-seed", "3", "--max-steps", "4"]) == 0
    run = RunDir(tmp_path / "runs" / "h")
    first = run.read_log("metrics")
    assert run.read_final() is not None  # a limit ends training: tested once
    capsys.readouterr()
    assert main(["run", "dim", "--train", "--resume", "--name", "h",
                 "--val-fraction", "0.3"]) == 2
    assert "drop --val-fraction/--val-seed" in one_error(capsys)
    assert main(["run", "dim", "--train", "--resume", "--name", "h"]) == 0
    config = run.read_config()
    assert config["extra"]["holdout"] == {"fraction": 0.5, "seed": 3}
    assert (config["train_pairs"], config["val_pairs"]) == (3, 2)
    records = run.read_log("metrics")
    assert records[:len(first)] == first and records[-1]["epoch"] == 3
    assert all(set(r["images"]) == set(first[0]["images"]) for r in records)
    final = run.read_final()
    assert final is not None and final["results"]["last"]["step"] == 9


def test_eval_split_val_scores_the_pairs_the_run_selected_on(
        dim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dim", "--train", "--name", "v", *FAST, "--val-fraction", "0.5",
                 "--val-seed", "3", "--epochs", "1"]) == 0
    selected_on = set(RunDir(tmp_path / "runs" / "v").read_log("metrics")[0]["images"])
    capsys.readouterr()
    assert main(["run", "dim", "--eval", "--split", "val", "--checkpoint", "runs/v",
                 "--data", "data", "--metrics", "psnr", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)["images"]["identity"]
    # Not the default holdout (20 %, seed 0: one pair), the run's own two pairs.
    assert set(scored) == selected_on and len(selected_on) == 2
    assert main(["run", "dim", "--train", "--name", "n", *FAST, "--val-fraction", "0",
                 "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["run", "dim", "--eval", "--split", "val", "--checkpoint", "runs/n",
                 "--data", "data", "--metrics", "psnr"]) == 2
    assert "was trained without a validation split (--val-fraction 0)" in one_error(capsys)


# -- old names -----------------------------------------------------------------------------------
def test_a_checkpoint_storing_best_metric_still_loads(dim, tmp_path: Path) -> None:
    """Format 2 called the option best_metric; format 3 reads it as select_metric."""
    assert main(["run", "dim", "--train", "--name", "r", *FAST, "--epochs", "1",
                 "--select-metric", "mae"]) == 0
    run = RunDir(tmp_path / "runs" / "r")
    tensors, meta = container.read_file(run.checkpoint_path("last"))
    meta["format"] = 2
    meta["options"]["best_metric"] = meta["options"].pop("select_metric")
    container.write_checkpoint(run.checkpoint_path("last"), tensors, meta)
    upgraded = st.read_metadata(run.checkpoint_path("last"))
    assert upgraded["format"] == st.FORMAT_VERSION
    assert upgraded["options"]["select_metric"] == "mae" and "best_metric" not in upgraded
    # A config file with the old name (an older --export-best) trains with it.
    config = run.read_config()
    config["options"]["best_metric"] = config["options"].pop("select_metric")
    (tmp_path / "old.json").write_text(json.dumps(config))
    assert main(["run", "dim", "--train", "--name", "c", "--config", "old.json",
                 "--device", "cpu"]) == 0
    best = read_checkpoint(RunDir(tmp_path / "runs" / "c").checkpoint_path("best"))[1]
    assert best["best"]["metric"] == "mae"


def test_evaluation_records_keep_the_per_image_values() -> None:
    from restorekit.api import Metric
    from restorekit.evaluate import Evaluation

    psnr = Metric("psnr", lambda a, b: 0.0, higher_is_better=True)
    record = Evaluation({"a": {"psnr": 20.0}, "b": {"psnr": 22.0}}, [psnr]).record()
    assert record["psnr"] == 21.0 and record["images"] == {"a": {"psnr": 20.0},
                                                          "b": {"psnr": 22.0}}
    assert json.loads(json.dumps(record)) == record


# -- a study ----------------------------------------------------------------------------------
def test_a_study_tests_each_reported_trials_selected_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial evaluates only the validation split; the final evaluation reads the test
    split once, with the trial's best checkpoint, and keeps the per-image values."""
    pytest.importorskip("optuna")
    import importlib.util

    import optuna

    from restorekit.tune import study as study_module

    spec = importlib.util.spec_from_file_location(
        "tune_fixtures", Path(__file__).parents[1] / "test_tune" / "conftest.py")
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    space = tmp_path / "tiny.toml"
    space.write_text(fixtures.TINY_MODEL)
    lol = tmp_path / "LOL"  # 5 training pairs (1 for validation), 2 test pairs
    write_pairs(lol / "our485", "p", 5, (40, 48))
    write_pairs(lol / "eval15", "t", 2, (40, 48))
    reads: list[str] = []
    read = pairs_module.FolderPairs.pair

    def pair(self, i, rng=None):
        reads.append(self.title)
        return read(self, i, rng)

    final = study_module.final_evaluation
    loaded: list[str] = []

    def spying_final(*args, **kwargs):
        reads.append("FINAL EVALUATION")
        return final(*args, **kwargs)

    def spying_load(checkpoint, *args, **kwargs):
        loaded.append(Path(checkpoint).name)
        return load_trained(checkpoint, *args, **kwargs)

    import restorekit.tune

    load_trained = study_module.load_trained
    monkeypatch.setattr(pairs_module.FolderPairs, "pair", pair)
    monkeypatch.setattr(restorekit.tune, "final_evaluation", spying_final)
    monkeypatch.setattr(study_module, "final_evaluation", spying_final)
    monkeypatch.setattr(study_module, "load_trained", spying_load)
    studies = tmp_path / "studies"
    assert main(["tune", "pix2pixhd", "--space", str(space), "--studies-dir", str(studies),
                 "--max-steps", "2", "--device", "cpu", "--seed", "0", "--data", str(lol),
                 "--trials", "1"]) == 0
    cut = reads.index("FINAL EVALUATION")
    assert "LOL eval15" not in reads[:cut] and "LOL eval15" in reads[cut:]
    assert loaded == ["best.safetensors"]
    study = optuna.load_study(study_name="pix2pixhd",
                              storage=f"sqlite:///{studies / 'pix2pixhd' / 'study.db'}")
    tested = study.user_attrs["test"]["0"]
    assert tested["checkpoint"] == "best" and len(tested["images"]) == 2
    val = study.trials[0].user_attrs["val"]
    assert len(val["images"]) == 1 and val["psnr"] == pytest.approx(study.trials[0].value)


def test_too_few_training_pairs_for_a_validation_split_is_one_line(
        dim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pairs(tmp_path / "one" / "train", "p", 1)
    write_pairs(tmp_path / "one" / "test", "t", 1)
    argv = ["run", "dim", "--train", "--name", "o", *FAST, "--data", "one"]
    assert main(argv) != 0
    assert one_error(capsys) == (
        "restorekit: error: a validation split needs at least 2 training pairs (got 1); "
        "train without one with --val-fraction 0")
    assert main([*argv, "--val-fraction", "0", "--overwrite"]) == 0
