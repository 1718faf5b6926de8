"""`restorekit convert`: NVIDIA pix2pixHD checkpoints into a restorekit run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.cli import main
from restorekit.engine import load_trained, read_checkpoint
from restorekit.plugins import get_registry

QUICK = ["--netG", "global", "--ngf", "8", "--n-downsample-global", "2",
         "--n-blocks-global", "2", "--ndf", "8", "--n-layers-D", "2", "--num-D", "2"]


def nvidia_checkpoints(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """What NVIDIA's train.py writes: torch.save(net.state_dict()) per network."""
    from restorekit_pix2pixhd.networks import GlobalGenerator, MultiscaleDiscriminator

    torch.manual_seed(1)
    nets = {"G": GlobalGenerator(3, 3, 8, 2, 2), "D": MultiscaleDiscriminator(6, 8, 2, 2)}
    folder.mkdir()
    for name, net in nets.items():
        torch.save(net.state_dict(), folder / f"latest_net_{name}.pth")
    return {name: net.state_dict() for name, net in nets.items()}


def test_convert_writes_a_run_folder_of_safetensors(tmp_path: Path, monkeypatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    states = nvidia_checkpoints(tmp_path / "nvidia")
    run = tmp_path / "runs" / "nvidia"
    assert main(["convert", "pix2pixhd", str(tmp_path / "nvidia"), "-o", str(run), *QUICK]) == 0
    assert "next: restorekit run pix2pixhd --eval --checkpoint" in capsys.readouterr().out
    tensors, meta = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["model"] == "pix2pixhd" and meta["converted_from"] == str(tmp_path / "nvidia")
    for name, state in states.items():
        for key, value in state.items():
            assert torch.equal(tensors[f"net.{name}.{key}"], value), key
    model = load_trained(run, get_registry(), device="cpu")
    out = model.enhance(np.full((20, 28, 3), 0.2, np.float32))
    assert out.shape == (20, 28, 3)


def test_convert_refuses_mismatched_options_and_pickles(tmp_path: Path, monkeypatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    nvidia_checkpoints(tmp_path / "nvidia")
    assert main(["convert", "pix2pixhd", str(tmp_path / "nvidia"), "-o", str(tmp_path / "r"),
                 "--netG", "global", "--ngf", "16"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("restorekit: error:") and "'net.G.model.1.weight' has shape" in last
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"weights": object()}, evil / "latest_net_G.pth")
    assert main(["convert", "pix2pixhd", str(evil), "-o", str(tmp_path / "r2"), *QUICK]) == 1
    assert "weights-only" in capsys.readouterr().err


def test_convert_is_the_pix2pixhd_plugins_command(tmp_path: Path, monkeypatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.cli.commands import COMMANDS

    assert "convert" not in [c.name for c in COMMANDS]  # not a core command any more
    assert get_registry().owners["commands"]["convert"] == "pix2pixhd"
    nvidia_checkpoints(tmp_path / "nvidia")
    assert main(["convert", "classic", str(tmp_path / "nvidia"), "-o", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "restorekit: error: convert: NVIDIA pix2pixHD checkpoints convert into model "
        "'pix2pixhd', not 'classic'")
    assert not (tmp_path / "r").exists()
