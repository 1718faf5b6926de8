"""Several workers on one study: distinct trials, exact counts, dead workers, old checkpoints.

Any number of ``restorekit tune`` processes (on one machine or several) may share a study
through its storage. This module keeps them honest:

* :class:`TrialSeededTPESampler` seeds each trial's suggestions from ``--seed`` and the trial's
  number, which the storage hands out once: workers started with the same seed never
  suggest the same configuration, and one worker with ``--seed`` repeats itself run to run.
* :func:`guarded` stops a trial before it trains when the study already has ``--trials``
  trials, counting the ones still running, so a study never runs more than asked.
* :func:`fail_dead` fails the trials of dead workers with the reason "worker died": a worker
  on this machine whose process is gone, or any worker whose heartbeat (an RDB storage's,
  every ``heartbeat`` seconds) is older than three heartbeats. A dead preset is queued again.
* :func:`keep_best_checkpoints` deletes the checkpoints of the trials outside the best K.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from restorekit.engine.rundir import RunDir
from restorekit.errors import RestorekitError

HEARTBEAT_S = 10
"""Default seconds between a running trial's heartbeats (RDB storages)."""
GRACE = 3
"""A trial whose last heartbeat is ``GRACE`` heartbeats old belongs to a dead worker."""
BACKSTOP = 10
"""Optuna's own check fails stale trials after ``BACKSTOP`` heartbeats; restorekit's comes
first, because it records the reason (Optuna allows no attribute on a finished trial)."""


def _optuna() -> Any:
    import optuna

    return optuna


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a study seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def sampler(seed: int | None) -> Any:
    """A TPE sampler whose random state is reseeded for each trial (see the module)."""
    optuna = _optuna()

    class TrialSeededTPESampler(optuna.samplers.TPESampler):
        def before_trial(self, study: Any, trial: Any) -> None:
            if seed is not None:
                state = trial_seed(seed, trial.number)
                self._rng.rng.seed(state)
                self._random_sampler._rng.rng.seed(state)
            super().before_trial(study, trial)

    return TrialSeededTPESampler(seed=seed)


# -- which trials count, which are alive -----------------------------------------------------
def host() -> str:
    """This machine's name, as recorded in each trial's ``host`` attribute."""
    return socket.gethostname()


def replaced(trial: Any) -> bool:
    """A trial that failed through no fault of its configuration (its worker died, or it was
    not run because the study was full): it does not count and another takes its place."""
    return bool(trial.user_attrs.get("worker_died") or trial.user_attrs.get("not_run"))


def counted(study: Any) -> int:
    """Trials that count towards ``--trials``: complete, pruned, or failed with a reason of
    their own (interrupted, killed and not-run trials do not count; others replace them)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs
                   and not replaced(t)))


def taken(study: Any, number: int | None = None) -> int:
    """Trials that count, plus the running ones (numbered below ``number``, if given) and
    the queued presets: the places in the study already taken."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING
               and (number is None or t.number < number)]
    presets = [t for t in trials if t.state == TrialState.WAITING and t.number != number
               and t.user_attrs.get("baseline")]
    return counted(study) + len(running) + len(presets)


def _heartbeat(storage: Any) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def _stale(study: Any, grace: float) -> set[int]:
    """Trial ids whose heartbeat is older than ``grace`` seconds (RDB storages)."""
    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    if _heartbeat(storage) is None:
        return set()
    saved, storage.grace_period = storage.grace_period, grace
    try:
        return set(storage._get_stale_trial_ids(study._study_id))
    finally:
        storage.grace_period = saved


def _process_gone(trial: Any) -> bool:
    """The trial's worker ran on this machine and its process is gone."""
    name, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if name != host() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process
        return False
    return False


def fail_dead(study: Any, say: Callable[[str], None] = print) -> list[int]:
    """Fail the running trials of dead workers, with the reason, and free their run folders;
    queue a dead preset again. Returns the numbers failed here."""
    optuna = _optuna()
    from optuna.trial import TrialState

    storage = study._storage
    interval = _heartbeat(storage)
    stale = _stale(study, GRACE * interval) if interval else set()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t._trial_id in stale:
            reason = f"worker died (no heartbeat for {GRACE * interval} s)"
        elif _process_gone(t):
            reason = f"worker died (process {t.user_attrs['worker']} is gone)"
        else:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(t._trial_id, "worker_died", True)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it (or it finished) first
        failed.append(t.number)
        say(f"tune: trial {t.number} failed: {reason}")
        _unlock(t)
        if t.user_attrs.get("baseline"):
            study.enqueue_trial({}, user_attrs={"baseline": True})
            say(f"tune: the preset's trial {t.number} is queued again")
    return failed


def _unlock(trial: Any) -> None:
    """Clear the stale lock a dead worker left in its run folder on this machine."""
    run = trial.user_attrs.get("run")
    if trial.user_attrs.get("host") != host() or not run or not Path(run).is_dir():
        return
    folder = RunDir(Path(run))
    with contextlib.suppress(RestorekitError, OSError):
        folder.lock()
        folder.release()


def settle(study: Any, say: Callable[[str], None] = print) -> None:
    """Fail dead workers' trials; while a running trial's heartbeat is late (older than one
    and a half heartbeats), wait until it beats again or is stale and failed."""
    interval = _heartbeat(study._storage)
    fail_dead(study, say)
    if not interval:
        return
    deadline = time.monotonic() + (GRACE + 1) * interval
    while _stale(study, 1.5 * interval) and time.monotonic() < deadline:
        time.sleep(interval)
        fail_dead(study, say)


def guarded(objective: Callable[[Any], float], trials: int,
            say: Callable[[str], None] = print) -> Callable[[Any], float]:
    """``objective``, run only while the study has room: a trial that would make more than
    ``trials`` (counting running ones and queued presets) fails at once as not run, and
    stops this worker. A preset's trial always runs."""

    def run(trial: Any) -> float:
        trial.set_user_attr("host", host())
        trial.set_user_attr("worker", f"{host()}:{os.getpid()}")
        fail_dead(trial.study, say)
        if not trial.user_attrs.get("baseline") and \
                taken(trial.study, trial.number) >= trials:
            trial.set_user_attr("not_run", True)
            trial.set_user_attr("fail_reason", f"not run: the study has its {trials} "
                                               f"trials (counting running ones)")
            trial.study.stop()
            return math.nan
        return objective(trial)

    return run


# -- checkpoints -------------------------------------------------------------------------------
REMOVED = "checkpoints_removed"
"""Study user attribute: the trials whose checkpoints ``--keep-checkpoints`` deleted."""


def keep_best_checkpoints(study: Any, keep: int, trials_folder: Path,
                          needed: list[int]) -> list[int]:
    """Delete the checkpoint files of every finished trial outside the best ``keep`` complete
    ones, the presets and ``needed``, where the trial's run folder is inside
    ``trials_folder`` on this machine; recorded in the study attribute ``REMOVED``.
    Returns the trials whose checkpoints were deleted now."""
    from optuna.trial import TrialState

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    # By the (first) objective: a multi-objective study's checkpoints are chosen by it too.
    higher = study.directions[0] == _optuna().study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.values[0], reverse=higher)
    kept = {t.number for t in ranked[:keep]} | set(needed) | \
        {t.number for t in finished if t.user_attrs.get("baseline")}
    root = trials_folder.resolve()
    removed: dict[str, str] = dict(study.user_attrs.get(REMOVED, {}))
    now = []
    for t in finished:
        if t.number in kept or t.user_attrs.get("host") != host() or not t.user_attrs.get("run"):
            continue
        checkpoints = RunDir(Path(t.user_attrs["run"])).checkpoints
        if not checkpoints.is_dir() or not checkpoints.resolve().is_relative_to(root):
            continue
        files = [f for f in checkpoints.iterdir() if f.is_file() or f.is_symlink()]
        for f in files:
            f.unlink()
        if files:
            now.append(t.number)
            removed[str(t.number)] = f"checkpoints removed (--keep-checkpoints {keep})"
    if removed != study.user_attrs.get(REMOVED, {}):
        study.set_user_attr(REMOVED, removed)
    return now
