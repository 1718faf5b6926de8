"""`restorekit run`: help, preset defaults, resume hints, plugin metrics (issue 10 rough edges)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from restorekit import Metric, TrainableModel, hookimpl, testing
from restorekit.cli import main
from restorekit.engine import RunDir, TrainConfig


@dataclass
class DimOptions(TrainConfig):
    gain: float = 1.5


class Dim(TrainableModel):
    """A one-layer trainable model without presets."""

    name = "dim"
    description = "one convolution"
    Options = DimOptions

    def build(self, device: torch.device) -> None:
        self.net = nn.Conv2d(3, 3, 3, padding=1).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def train_step(self, low, high, ctx):
        loss = (self.enhance_tensor(low) - high).abs().mean()
        ctx.backward_step(loss, "net")
        return {"l1": loss.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return (self.net(low) * self.options.gain).clamp(0, 1)


class DimPlugin:
    @hookimpl
    def register_models(self, register):
        register(Dim)

    @hookimpl
    def register_metrics(self, register):
        register(Metric("meanerr", lambda a, b: float(abs(np.mean(a) - np.mean(b))),
                        higher_is_better=False))


FAST = ["--epochs", "1", "--batch-size", "2", "--crop-size", "32", "--samples-per-epoch", "4",
        "--num-samples", "1", "--device", "cpu"]


@pytest.fixture
def dim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    with testing.isolated(dim=DimPlugin()) as registry:
        yield registry


def test_run_help_lists_models(capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `restorekit: error: restorekit: unrecognized arguments: --help`."""
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: restorekit run MODEL")
    assert "pix2pixhd" in out and "classic" in out
    assert main(["run", "-h"]) == 0


def test_run_model_help_shows_the_preset_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Was: the base defaults (ngf 64) although `--train` uses the quick preset (ngf 24)."""
    with pytest.raises(SystemExit) as info:
        main(["run", "pix2pixhd", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--ngf NGF" in out and "24 with preset quick" in out and "else 64" in out
    assert "--metrics NAMES" in out


def test_no_preset_is_not_called_none(dim, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dim", "--train", "--max-steps", "1", *FAST]) == 0
    out = capsys.readouterr().out
    assert "training dim on the embedded synthetic low-light set -> runs/dim" in out
    assert "preset none" not in out


def test_resume_hint_names_the_runs_dir(dim, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    runs = str(tmp_path / "elsewhere")
    assert main(["run", "dim", "--train", "--max-steps", "1", "--runs-dir", runs, *FAST]) == 0
    out = capsys.readouterr().out
    assert (f"continue with: restorekit run dim --train --resume --name dim --runs-dir {runs}"
            in out)
    assert main(["run", "dim", "--train", "--resume", "--runs-dir", runs,
                 "--max-steps", "2"]) == 0
    assert main(["run", "dim", "--train", "--resume", "--runs-dir", runs, "--gain", "2"]) == 2
    assert "drop --gain" in capsys.readouterr().err


def test_plugin_metrics_are_in_eval_and_the_report(dim, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    """Was: plugin metrics only in `restorekit metrics`, never in `run --eval` or the report."""
    assert main(["run", "dim", "--train", *FAST]) == 0
    capsys.readouterr()
    assert main(["run", "dim", "--eval", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows["dim"]) == {"psnr", "ssim", "psnr_gtmean", "ssim_gtmean", "ciede2000",
                                "mae", "meanerr"}
    run = RunDir(tmp_path / "runs" / "dim")
    assert "meanerr" in run.read_log("metrics")[-1]
    assert "meanerr" in run.report.read_text()
    assert main(["run", "dim", "--eval", "--json", "--metrics", "psnr,meanerr"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows["identity"]) == {"psnr", "meanerr"}
    assert main(["run", "dim", "--eval", "--metrics", "nope"]) == 2
    assert "--metrics: unknown metric 'nope'" in capsys.readouterr().err


def test_a_run_without_checkpoint_is_never_the_newest(dim, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "dim", "--train", "--max-steps", "1", *FAST]) == 0
    empty = tmp_path / "runs" / "dim-2"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model": "dim"}))
    capsys.readouterr()
    assert main(["run", "dim", "--eval"]) == 0
    assert "using the newest run: runs/dim\n" in capsys.readouterr().err


def test_tiled_enhance_matches_whole_image(dim, tmp_path: Path) -> None:
    from restorekit.data import read_image, write_image

    assert main(["run", "dim", "--train", "--max-steps", "1", *FAST]) == 0
    image = np.random.default_rng(0).uniform(0, 0.3, (150, 130, 3)).astype(np.float32)
    write_image(tmp_path / "in" / "x.png", image)
    assert main(["run", "dim", "--enhance", str(tmp_path / "in"), "-o", "whole"]) == 0
    assert main(["run", "dim", "--enhance", str(tmp_path / "in"), "-o", "tiled",
                 "--tile", "64"]) == 0
    whole = read_image(tmp_path / "whole" / "x.png")
    tiled = read_image(tmp_path / "tiled" / "x.png")
    assert whole.shape == tiled.shape == image.shape
    # Zero padding at tile borders differs a little; the blended overlap hides the seams.
    assert np.abs(whole - tiled).mean() < 2 / 255 and np.abs(whole - tiled).max() < 0.1
