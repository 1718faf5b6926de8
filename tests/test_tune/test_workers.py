"""Several workers on one study: distinct and exact trials, dead workers, storage URLs,
``--keep-checkpoints``, metric names (issue 22, items 2 and 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_postgres import postgres_url  # noqa: F401 - the fixture
from test_study import ROOT, run_two_workers

from restorekit.cli import main
from restorekit.engine.rundir import RunDir
from restorekit.tune import study as study_module
from restorekit.tune import workers


def _rdb(path: Path, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{path}", heartbeat_interval=heartbeat)


def _lr(trial: optuna.Trial) -> float:
    return trial.suggest_float("lr", 1e-5, 1e-2, log=True)


# -- the sampler ---------------------------------------------------------------------------
def test_workers_with_one_seed_suggest_distinct_values_and_one_worker_repeats_itself(
        tmp_path: Path) -> None:
    storage = _rdb(tmp_path / "s.db")
    first = optuna.create_study(study_name="s", storage=storage, sampler=workers.sampler(7))
    second = optuna.load_study(study_name="s", storage=storage, sampler=workers.sampler(7))
    values = [_lr(s.ask()) for s in (first, second, first, second)]  # the same history
    assert len(set(values)) == 4
    # Optuna's own TPE sampler with one seed gives both workers the same values.
    plain = [optuna.create_study(sampler=optuna.samplers.TPESampler(seed=7)) for _ in range(2)]
    assert _lr(plain[0].ask()) == _lr(plain[1].ask())

    def alone() -> list[float]:
        study = optuna.create_study(sampler=workers.sampler(7))
        study.optimize(_lr, n_trials=4)
        return [t.params["lr"] for t in study.trials]

    assert alone() == alone() == values


# -- counting ------------------------------------------------------------------------------
def test_a_trial_that_would_exceed_the_count_with_running_ones_is_not_run(
        tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=_rdb(tmp_path / "s.db"))
    study.tell(study.ask(), 1.0)
    running = study.ask()  # a live worker (this process) trains trial 1
    running.set_user_attr("worker", f"{workers.host()}:{os.getpid()}")
    trained = []
    objective = workers.guarded(lambda t: trained.append(t.number) or 2.0, 2, print)
    study.optimize(objective, n_trials=1)
    surplus = study.trials[2]
    assert trained == [] and surplus.state == TrialState.FAIL
    assert surplus.user_attrs["fail_reason"].startswith("not run: the study has its 2 trials")
    assert workers.counted(study) == 1 and workers.taken(study) == 2
    study.tell(running, 3.0)
    assert workers.counted(study) == 2


# -- dead workers --------------------------------------------------------------------------
def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_dead_process_on_this_host_fails_its_trial_at_once_and_its_preset_is_requeued(
        tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=_rdb(tmp_path / "s.db"))
    study.enqueue_trial({}, user_attrs={"baseline": True})
    trial = study.ask()
    run = RunDir(tmp_path / "trials" / "0000")
    run.lock()
    pid = _dead_pid()
    run._lock.close()  # the lock file keeps the dead process's pid, as after kill -9
    run._lock = None
    run.lock_path.write_text(f"{pid}\n")
    for key, value in (("worker", f"{workers.host()}:{pid}"), ("host", workers.host()),
                       ("run", str(run.path))):
        trial.set_user_attr(key, value)
    said: list[str] = []
    assert workers.fail_dead(study, said.append) == [0]
    died = study.trials[0]
    assert died.state == TrialState.FAIL
    assert died.user_attrs["fail_reason"] == f"worker died (process {workers.host()}:{pid} " \
                                             f"is gone)"
    assert workers.counted(study) == 0  # another trial takes its place
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["baseline"] is True
    assert said == ["tune: trial 0 failed: worker died (process "
                    f"{workers.host()}:{pid} is gone)", "tune: the preset's trial 0 is "
                                                         "queued again"]
    assert run.lock_path.read_text() == ""  # the stale lock is cleared
    assert workers.fail_dead(study, said.append) == []  # once


@pytest.mark.filterwarnings("ignore:Argument ``heartbeat_interval``",
                            "ignore:Heartbeat of storage is supposed")
def test_a_silent_worker_elsewhere_is_failed_after_three_heartbeats(tmp_path: Path) -> None:
    storage = _rdb(tmp_path / "s.db", heartbeat=1)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", "another-machine:1")
    storage.record_heartbeat(trial._trial_id)
    assert workers.fail_dead(study, print) == []  # beating
    time.sleep(4.5)  # SQLite's clock counts whole seconds
    assert workers.fail_dead(study, print) == [0]
    assert study.trials[0].user_attrs["fail_reason"] == "worker died (no heartbeat for 3 s)"


# A worker that stops, with its trial's run folder locked, until it is killed.
STUCK = """
import pathlib, sys, time
from restorekit.engine.rundir import RunDir

lock = RunDir.lock

def stuck(self):
    lock(self)
    pathlib.Path(sys.argv[1]).write_text(str(self.path))
    time.sleep(600)

RunDir.lock = stuck
from restorekit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_workers_preset_is_failed_rerun_and_the_study_evaluated(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv: Callable[..., list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    argv = tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "1",
                     "--heartbeat", "1")
    locked = tmp_path / "locked"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins" / "pix2pixhd"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", STUCK, str(locked), *argv], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not locked.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert locked.is_file(), proc.stderr.read().decode()[-2000:] if proc.poll() else "slow"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    folder = Path(locked.read_text())
    assert (folder / RunDir.LOCK).read_text() == f"{proc.pid}\n"

    assert main(argv) == 0  # the same command again
    captured = capsys.readouterr()
    study = study_module.load_study("pix2pixhd", None, studies)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE], captured.err
    died, preset = study.trials
    assert died.user_attrs["fail_reason"].startswith("worker died")
    assert died.user_attrs["baseline"] and preset.user_attrs["baseline"]
    assert "tune: trial 0 failed: worker died" in captured.err  # its pid, or its heartbeat
    assert study.user_attrs["test"].keys() == {"1"}  # the final evaluation ran
    assert "test split (evaluated once, after the search)" in captured.out
    assert (folder / RunDir.LOCK).read_text() == ""
    report = (studies / "pix2pixhd" / "report.html").read_text()
    assert "worker died" in report


# -- several workers -----------------------------------------------------------------------
def test_two_workers_with_one_seed_run_distinct_configurations_and_exactly_the_trials(
        tiny_space: Path, lol: Path, tmp_path: Path,
        tune_argv: Callable[..., list[str]]) -> None:
    studies = tmp_path / "studies"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    outputs = run_two_workers(tune_argv(tiny_space, studies, "--data", str(lol), "--trials",
                                        "3", "--storage", url, "--study", "shared",
                                        "--heartbeat", "2"))
    study = study_module.load_study("shared", url, studies)
    seen = [(t.number, t.state.name, t.params, t.user_attrs.get("worker")) for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and workers.counted(study) == 3, seen
    assert all(t.user_attrs.get("not_run") for t in study.trials if t not in done), seen
    configurations = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(configurations)) == 3, seen
    assert sum(1 for t in done if t.user_attrs.get("baseline")) == 1, seen
    assert len({t.user_attrs["worker"] for t in done}) == 2, seen
    assert study.user_attrs["test"], outputs  # the last worker evaluated on test
    assert study.metric_names == ["psnr"]


# -- housekeeping --------------------------------------------------------------------------
def _files(folder: Path, skip: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and skip not in p.parents}


def test_keep_checkpoints_deletes_only_other_trials_checkpoints_in_the_study(
        tiny_space: Path, lol: Path, tmp_path: Path, tune_argv: Callable[..., list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    outside = tmp_path / "elsewhere" / "checkpoints"
    outside.mkdir(parents=True)
    (outside / "last.safetensors").write_bytes(b"not a study's")
    before = _files(tmp_path, studies)
    assert main(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "3",
                          "--pruner", "none", "--keep-checkpoints", "1")) == 0
    assert _files(tmp_path, studies) == before  # nothing outside the study touched
    study = study_module.load_study("pix2pixhd", None, studies)
    assert study.metric_names == ["psnr"]
    kept = {study.best_trial.number, 0}
    removed = study.user_attrs[workers.REMOVED]
    assert set(removed) == {str(t.number) for t in study.trials} - {str(n) for n in kept}
    for t in study.trials:
        checkpoints = sorted(p.name for p in RunDir(t.user_attrs["run"]).checkpoints.iterdir())
        if t.number in kept:
            assert "last.safetensors" in checkpoints, t.number
        else:
            assert checkpoints == [], t.number
            assert removed[str(t.number)] == "checkpoints removed (--keep-checkpoints 1)"
    assert "tune: removed the checkpoints of trial(s)" in capsys.readouterr().err

    # The final evaluation on a machine without the best trial's folder says where it is.
    best = Path(study.best_trial.user_attrs["run"])
    best.rename(tmp_path / "moved")
    study.set_user_attr(study_module.TEST_ATTR, {})
    assert main(["tune", "--report", "pix2pixhd", "--studies-dir", str(studies)]) == 0
    err = capsys.readouterr().err
    assert f"its run folder {best} (host {workers.host()}) is not on this machine" in err
    assert f"'restorekit tune --report pix2pixhd' on host {workers.host()}" in err


def test_storage_urls_are_stored_in_the_form_plain_optuna_opens(tmp_path: Path) -> None:
    pytest.importorskip("psycopg2")
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed: postgresql:// opens as written")
    url = study_module.storage_url("postgresql://me:secret@db.lab:5432/studies", tmp_path)
    assert url == "postgresql+psycopg2://me:secret@db.lab:5432/studies"
    assert study_module.shown_url(url) == "postgresql+psycopg2://me:***@db.lab:5432/studies"
    assert study_module.storage_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_a_postgresql_study_opens_in_plain_optuna_with_the_stored_url(
        postgres_url: str, tmp_path: Path,  # noqa: F811 - the fixture
        capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.errors import forget_warnings

    forget_warnings()
    storage = study_module.open_storage(postgres_url, tmp_path)
    optuna.create_study(study_name="lab", storage=storage)
    stored = study_module.storage_url(postgres_url, tmp_path)
    assert optuna.load_study(study_name="lab", storage=stored).study_name == "lab"
    if stored != postgres_url:
        with pytest.raises(ImportError):
            optuna.load_study(study_name="lab", storage=postgres_url)
        err = capsys.readouterr().err
        assert "postgresql:// does not open as written; using postgresql+psycopg2://" in err


@pytest.mark.parametrize(("flag", "value"), [("--keep-checkpoints", "0"),
                                             ("--heartbeat", "0")])
def test_bad_worker_flags_are_one_line(flag: str, value: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "pix2pixhd", "--trials", "1", "--studies-dir", str(tmp_path),
                 flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"restorekit: error: {flag}: ") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())
