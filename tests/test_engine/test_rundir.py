"""RunDir: the one place that knows the run-folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from restorekit.engine import RunDir, find_checkpoint
from restorekit.errors import CheckpointError, UsageError


def fake_run(path: Path, model: str, checkpoint: bool = True) -> RunDir:
    run = RunDir(path)
    run.prepare()
    run.write_config({"model": model})
    if checkpoint:
        run.checkpoint_path().write_bytes(b"x")
        run.commit_checkpoint(run.checkpoint_path(), best=False, info={"step": 1})
    return run


def test_layout(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.prepare() is None
    assert run.checkpoints.is_dir() and run.samples.is_dir()
    assert run.checkpoint_path("best") == tmp_path / "r" / "checkpoints" / "best.safetensors"
    assert run.sample_path(3).name == "epoch_003.png"
    run.write_config({"model": "m"})
    config = run.read_config()
    assert config["model"] == "m" and config["run"] == "r" and config["resumed_at"] == []
    run.write_config({"model": "m"}, resumed=True)
    assert len(run.read_config()["resumed_at"]) == 1
    run.log("losses", {"step": 1, "l1": 0.5})
    run.log("losses", {"step": 2, "l1": 0.4})
    run.truncate_logs(1)
    assert run.read_log("losses") == [{"step": 1, "l1": 0.5}]


def test_newest_run_needs_a_checkpoint(tmp_path: Path) -> None:
    fake_run(tmp_path / "m", "m")
    fake_run(tmp_path / "m-2", "m", checkpoint=False)  # crashed before its first save
    fake_run(tmp_path / "o", "other")
    assert [r.name for r in RunDir.runs_of(tmp_path, "m")] == ["m"]
    assert RunDir.newest(tmp_path, "m").name == "m"
    assert RunDir.newest(tmp_path, "nothing") is None


def test_next_free_numbers_runs(tmp_path: Path) -> None:
    assert RunDir.next_free(tmp_path, "m").name == "m"
    fake_run(tmp_path / "m", "m")
    fake_run(tmp_path / "m-2", "m", checkpoint=False)
    assert RunDir.next_free(tmp_path, "m").name == "m-3"


def test_prepare_refuses_to_clobber_and_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    fake_run(tmp_path / "m", "m", checkpoint=False)
    with pytest.raises(UsageError, match="--resume to continue it or --overwrite"):
        RunDir(tmp_path / "m").prepare()
    with pytest.raises(UsageError, match="has no checkpoint .*--overwrite"):
        RunDir(tmp_path / "m").prepare(resume=True)
    with pytest.raises(UsageError, match="not both"):
        RunDir(tmp_path / "m").prepare(resume=True, overwrite=True)
    assert RunDir(tmp_path / "m").prepare(overwrite=True) is None
    assert RunDir(tmp_path / "m").read_config() == {}


def test_find_checkpoint_and_corrupt_pointer(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "m", "m")
    assert find_checkpoint(run.path) == run.checkpoint_path()
    assert find_checkpoint(run.checkpoints) == run.checkpoint_path()
    (run.checkpoints / RunDir.POINTER).write_text(json.dumps({"file": "gone.safetensors"}))
    with pytest.raises(CheckpointError, match="points to missing file"):
        find_checkpoint(run.path)


def test_only_rundir_knows_the_layout() -> None:
    """No other engine or CLI module spells the run folder's file names."""
    root = Path(__file__).resolve().parents[2] / "restorekit"
    names = ('"config.json"', '"checkpoints"', '"metrics.jsonl"', '"losses.jsonl"',
             '"baselines.json"', '"samples"', '"report.html"', '"latest.json"')
    for path in root.rglob("*.py"):
        if path.name == "rundir.py" or "ext" in path.parts:
            continue
        text = path.read_text()
        for name in names:
            assert name not in text, f"{path.relative_to(root)} hard-codes {name}"
