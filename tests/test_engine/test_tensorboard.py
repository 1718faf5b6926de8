"""--tensorboard: losses, metrics and sample grids as TensorBoard events (optional)."""

from __future__ import annotations

from pathlib import Path

import pytest

from restorekit.cli import main

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed "
                    "(pip install 'restorekit[tensorboard]')")


def test_tensorboard_logs_next_to_the_jsonl_files(tmp_path: Path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    assert main(["run", "pix2pixhd", "--train", "--tensorboard", "--max-steps", "2",
                 "--log-every", "1", "--ngf", "8", "--n-blocks-global", "1",
                 "--samples-per-epoch", "8", "--crop-size", "64", "--num-samples", "1"]) == 0
    events = EventAccumulator(str(tmp_path / "runs" / "pix2pixhd" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert any(t.startswith("losses/") for t in tags["scalars"])
    assert "metrics/psnr" in tags["scalars"]
    assert "samples/grid" in tags["images"]
