"""The example third-party plugin in plugins/zerodce (distribution restorekit-zerodce).

It is loaded through its entry point exactly as when installed (a dist-info on sys.path
pointing at the real package), listed by ``restorekit plugins``, trained and evaluated
through ``restorekit run zerodce``; its losses, curves and Retinex preprocessor are unit
tested. A slow test installs it with pip into a throw-away virtual environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit import plugins
from restorekit.cli import main
from restorekit.errors import UsageError

PLUGIN = Path(__file__).resolve().parents[1]


def _version() -> str:
    text = (PLUGIN / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"', text, re.M)
    assert found
    return found.group(1)


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """restorekit-zerodce 'installed': its package and a dist-info with the entry point."""
    site = tmp_path / "site"
    info = site / f"restorekit_zerodce-{_version()}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: restorekit-zerodce\nVersion: {_version()}\n")
    (info / "entry_points.txt").write_text("[restorekit]\nzerodce = zerodce_plugin\n")
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    monkeypatch.chdir(tmp_path)
    plugins.reset()
    yield tmp_path


# -- losses and curves -------------------------------------------------------------------------
def test_exposure_loss_is_zero_at_the_target_level() -> None:
    from zerodce_plugin.losses import exposure_loss

    assert exposure_loss(torch.full((2, 3, 32, 32), 0.6)).item() == pytest.approx(0, abs=1e-6)
    assert exposure_loss(torch.full((1, 3, 32, 32), 0.1)).item() == pytest.approx(0.5)


def test_color_constancy_is_zero_for_gray_and_positive_for_a_cast() -> None:
    from zerodce_plugin.losses import color_constancy_loss

    gray = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16)
    assert color_constancy_loss(gray).item() == pytest.approx(0, abs=1e-7)
    cast = gray * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    assert color_constancy_loss(cast).item() > 0


def test_spatial_consistency_and_smoothness() -> None:
    from zerodce_plugin.losses import illumination_smoothness_loss, spatial_consistency_loss

    x = torch.rand(2, 3, 32, 32)
    assert spatial_consistency_loss(x, x).item() == pytest.approx(0, abs=1e-7)
    assert spatial_consistency_loss(x, x * 0.2).item() > 0  # contrast lost
    assert illumination_smoothness_loss(torch.full((1, 24, 8, 8), 0.3)).item() == 0
    assert illumination_smoothness_loss(torch.rand(1, 24, 8, 8)).item() > 0


def test_zero_curves_are_the_identity_and_outputs_stay_in_range() -> None:
    from zerodce_plugin.model import DCENet, apply_curves

    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(apply_curves(x, torch.zeros(2, 24, 16, 16)), x)
    a = torch.rand(2, 24, 16, 16) * 2 - 1
    out = apply_curves(x, a)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.all(apply_curves(x, torch.ones(2, 24, 16, 16)) >= x)  # a > 0 brightens
    net = DCENet(width=8, n_iter=8)
    curves = net(x)
    assert curves.shape == (2, 24, 16, 16)
    assert torch.equal(apply_curves(x, curves), x)  # initialised at the identity curve


def test_retinex_brightens_a_dark_image_within_range() -> None:
    from zerodce_plugin.retinex import retinex

    rng = np.random.default_rng(0)
    dark = (rng.uniform(0, 0.1, (64, 80, 3)) * np.linspace(0.2, 1, 80)[None, :, None])
    out = retinex(dark.astype(np.float32), sigma=20.0)
    assert out.shape == dark.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.mean() > 3 * dark.mean()
    np.testing.assert_allclose(retinex(dark.astype(np.float32), mix=0.0), dark, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        retinex(dark, sigma=0)


# -- through restorekit, as an installed plugin ---------------------------------------------
def test_listed_by_restorekit_plugins(installed: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    z = infos["zerodce"]
    assert (z["source"], z["version"], z["error"]) == ("restorekit-zerodce", _version(), None)
    assert z["registered"]["models"] == ["zerodce"]
    assert z["registered"]["preprocessors"] == ["retinex"]
    assert main(["plugins", "--hooks"]) == 0
    out = capsys.readouterr().out
    assert "zerodce  0.1.0  (restorekit-zerodce)  ok" in out
    assert "hooks: register_models, register_preprocessors" in out


def test_retinex_runs_in_a_pipeline(installed: Path) -> None:
    from restorekit.pipeline import Pipeline

    pipeline = Pipeline.parse("retinex:sigma=10:clip=0.02", plugins.get_registry())
    image = np.random.default_rng(1).uniform(0, 0.2, (32, 32, 3)).astype(np.float32)
    assert pipeline(image).shape == image.shape


def test_trains_and_evaluates_through_the_cli(installed: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    runs = str(installed / "runs")
    assert main(["run", "zerodce", "--train", "--max-steps", "2", "--batch-size", "2",
                 "--crop-size", "64", "--runs-dir", runs]) == 0
    config = json.loads((installed / "runs" / "zerodce" / "config.json").read_text())
    assert config["model"] == "zerodce" and config["options"]["scale"] == 4  # quick preset
    capsys.readouterr()
    assert main(["run", "zerodce", "--eval", "--json", "--runs-dir", runs]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows) == {"identity", "zerodce"}
    assert np.isfinite(rows["zerodce"]["psnr"])


def test_bad_option_is_a_usage_error(installed: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "zerodce", "--train", "--crop-size", "8", "--runs-dir", "r"]) == 2
    assert "--crop-size" in capsys.readouterr().err


def test_bad_precision_is_refused(installed: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from zerodce_plugin.model import ZeroDCEOptions

    assert main(["run", "zerodce", "--train", "--precision", "bogus", "--runs-dir", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("restorekit: error: --precision: expected one of auto, fp32, bf16, fp16, "
                   "got 'bogus'")
    with pytest.raises(UsageError, match="--precision"):  # the engine's own check runs too
        ZeroDCEOptions(precision="bogus")


@pytest.mark.slow
def test_pip_installs_it_into_a_virtual_environment(tmp_path: Path, offline_build: None) -> None:
    venv = tmp_path / "venv"
    # --without-pip: the environment's own (newer) pip and setuptools are used, offline.
    from restorekit.testing import make_venv

    py = make_venv(venv, with_pip=False)
    env = {**os.environ, "PIP_NO_INDEX": "1", "RESTOREKIT_EXT": "off",
           "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "-e", str(PLUGIN)], check=True, timeout=300, env=env, cwd=tmp_path)
    proc = subprocess.run([str(py), "-m", "restorekit.cli", "plugins"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "zerodce  0.1.0  (restorekit-zerodce)  ok" in proc.stdout
    assert "models: zerodce" in proc.stdout
