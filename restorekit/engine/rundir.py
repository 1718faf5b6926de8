"""One run folder: the only code that knows the layout of ``runs/<name>/``.

Layout::

    config.json          what was trained on what (model, options, preprocess, data, versions)
    checkpoints/         last.safetensors (+ .json sidecar), best.safetensors, latest.json
    losses.jsonl         loss terms every ``log_every`` steps
    metrics.jsonl        validation metrics after each evaluation (per-image values too)
    baselines.json       identity and best-classic rows on the validation split, once per run
    test.json            the test split, evaluated once when training ended (last and best)
    samples/             epoch_NNN.png sample grids (low | enhanced | ground truth)
    report.html          with losses.svg and metrics.svg
    tensorboard/         event files, with ``--tensorboard``
    .restorekit-run      the marker written when restorekit created the run (--overwrite)
    .restorekit.lock     the lock of the process training in it

The model's options and preprocessing live in the checkpoints (a lone checkpoint file
describes itself); ``config.json`` holds what is not in a checkpoint (the data path and
run history) and a readable copy of the rest. Resuming and loading both read the options
from the checkpoint, nowhere else.

Every write into a run folder goes through this class, and :meth:`prepare` is where its
safety lives: a run name is a plain name inside the runs folder (:meth:`named`),
``--overwrite`` clears only a folder that restorekit marked as its run when it created it
(the ``.restorekit-run`` marker, :meth:`is_marked`; never a guess from its contents),
``--resume`` never deletes and falls back from an unusable ``last`` to ``best``, stray
``.*.tmp`` files of a killed process are removed, and an OS lock (``fcntl.flock`` on
``.restorekit.lock`` inside the folder) keeps a second process out until :meth:`release`
(or the process's exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from restorekit.atomic import atomic_copy, atomic_path, atomic_write_text
from restorekit.engine.checkpoint import SUFFIX, sidecar, timestamp
from restorekit.errors import CheckpointError, LockError, UsageError, warn

FICLONE = 0x40049409
"""Linux's ioctl that makes a file a copy-on-write clone of another (btrfs, XFS, bcachefs)."""


def _clone_or_copy(src: Path, dst: Path) -> None:
    """``dst`` atomically replaced by an independent copy of ``src``: a copy-on-write clone
    where the file system makes them (no data written), else a byte copy."""
    import fcntl

    try:
        with atomic_path(dst) as tmp, open(src, "rb") as source, open(tmp, "wb") as target:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
    except OSError:  # no clones on this file system (ext4, tmpfs, ...)
        atomic_copy(src, dst)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (a torn last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class RunDir:
    """A run folder: paths, config, logs, checkpoints, samples, and finding runs."""

    CONFIG = "config.json"
    CHECKPOINTS = "checkpoints"
    LOSSES = "losses.jsonl"
    METRICS = "metrics.jsonl"
    BASELINES = "baselines.json"
    FINAL = "test.json"
    SAMPLES = "samples"
    REPORT = "report.html"
    LOSSES_SVG = "losses.svg"
    METRICS_SVG = "metrics.svg"
    TENSORBOARD = "tensorboard"
    LAST = "last"
    BEST = "best"
    POINTER = "latest.json"
    LOCK = ".restorekit.lock"
    MARKER = ".restorekit-run"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None
        self._created = False

    @classmethod
    def named(cls, runs_dir: str | Path, name: str) -> RunDir:
        """``runs_dir/name``; ``name`` must be a plain folder name (no path, no ``..``)."""
        bad = (not name or name in (".", "..") or "/" in name or "\\" in name
               or "\0" in name or (os.altsep is not None and os.altsep in name)
               or Path(name).is_absolute())
        if bad:
            raise UsageError(f"--name: {name!r} is not a plain run name (a folder name "
                             f"inside {runs_dir}: no '/', no '..', no absolute path)")
        return cls(Path(runs_dir) / name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # -- paths -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def losses_log(self) -> Path:
        return self.path / self.LOSSES

    @property
    def metrics_log(self) -> Path:
        return self.path / self.METRICS

    @property
    def baselines_path(self) -> Path:
        return self.path / self.BASELINES

    @property
    def samples(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def chart(self, which: str) -> Path:
        """``losses.svg`` or ``metrics.svg``."""
        return self.path / {"losses": self.LOSSES_SVG, "metrics": self.METRICS_SVG}[which]

    def sample_path(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:03d}.png"

    def sample_files(self) -> list[Path]:
        return sorted(self.samples.glob("*.png")) if self.samples.is_dir() else []

    def checkpoint_path(self, which: str = LAST) -> Path:
        """``checkpoints/last.safetensors`` or ``checkpoints/best.safetensors``."""
        return self.checkpoints / f"{which}{SUFFIX}"

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    # -- state -----------------------------------------------------------------------------
    def is_empty(self) -> bool:
        """No folder, or nothing in it but restorekit's lock file and run marker."""
        return not self.path.is_dir() or all(p.name in (self.LOCK, self.MARKER)
                                             for p in self.path.iterdir())

    @property
    def marker_path(self) -> Path:
        return self.path / self.MARKER

    def is_marked(self) -> bool:
        """restorekit created this folder as a run (its marker is a regular file): the only
        kind of folder ``--overwrite`` may clear."""
        return self.marker_path.is_file() and not self.marker_path.is_symlink()

    def _mark(self) -> None:
        """Write the marker that makes this folder a run restorekit may later clear."""
        info = {"restorekit_run": True, "created_at": timestamp(), "pid": os.getpid()}
        atomic_write_text(self.marker_path, json.dumps(info) + "\n")

    def is_run(self) -> bool:
        """A restorekit run folder: its marker, or (runs made before the marker existed) a
        checkpoint pointer or checkpoint. Such a folder may be resumed; only a marked one
        may be cleared by ``--overwrite``."""
        if self.is_marked() or (self.checkpoints / self.POINTER).is_file():
            return True
        return any(self.checkpoint_path(w).is_file() for w in (self.LAST, self.BEST))

    def _pointer_target(self) -> Path | None:
        pointer = self.checkpoints / self.POINTER
        if not pointer.is_file():
            return None
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{pointer}: corrupt checkpoint pointer "
                                  f"({' '.join(str(exc).split())})") from None
        name = data.get("file") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise CheckpointError(f"{pointer}: field 'file' must be a checkpoint file name "
                                  f"in {self.checkpoints}, got {name!r}")
        return self.checkpoints / name

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint (``latest.json``, else ``last.safetensors``), or None."""
        target = self._pointer_target()
        if target is not None:
            if not target.is_file():
                raise CheckpointError(f"{self.checkpoints / self.POINTER}: points to missing "
                                      f"file {target}")
            return target
        last = self.checkpoint_path(self.LAST)
        return last if last.is_file() else None

    def resume_candidates(self) -> list[Path]:
        """Existing checkpoints to resume from, newest first: the pointer's, last, best."""
        found: list[Path] = []
        with contextlib.suppress(CheckpointError):
            target = self._pointer_target()
            if target is not None:
                found.append(target)
        found += [self.checkpoint_path(w) for w in (self.LAST, self.BEST)]
        unique = list(dict.fromkeys(found))
        return [p for p in unique if p.is_file()]

    def has_checkpoint(self) -> bool:
        try:
            return self.latest_checkpoint() is not None
        except CheckpointError:
            return False

    # -- config and logs -------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """``config.json`` ({} when absent); a corrupt file is a one-line ``UsageError``."""
        if not self.config_path.is_file():
            return {}
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.config_path} is corrupt ({exc})") from None
        if not isinstance(config, dict):
            raise UsageError(f"{self.config_path} is corrupt (expected a JSON object, got "
                             f"{type(config).__name__})")
        return config

    def data_path(self) -> str | None:
        """The ``--data`` folder the run trained on (``extra.data_path``; None: embedded)."""
        extra = self.read_config().get("extra", {})
        if not isinstance(extra, dict):
            raise UsageError(f"{self.config_path}: field 'extra' must be an object, "
                             f"got {extra!r}")
        data = extra.get("data_path")
        if data is not None and not isinstance(data, str):
            raise UsageError(f"{self.config_path}: field 'extra.data_path' must be a folder "
                             f"name or null, got {data!r}")
        return data

    def write_config(self, config: dict[str, Any], resumed: bool = False) -> None:
        """Write ``config.json``, keeping ``started_at`` and the ``resumed_at`` history."""
        try:
            old = self.read_config()
        except UsageError:
            old = {}
        config = {**config, "run": self.name,
                  "started_at": old.get("started_at", timestamp()),
                  "resumed_at": list(old.get("resumed_at") or [])
                  + ([timestamp()] if resumed else [])}
        atomic_write_text(self.config_path, json.dumps(config, indent=1) + "\n")

    def read_baselines(self) -> dict[str, dict[str, float]] | None:
        if not self.baselines_path.is_file():
            return None
        return json.loads(self.baselines_path.read_text(encoding="utf-8"))

    def write_baselines(self, baselines: dict[str, dict[str, float]]) -> None:
        atomic_write_text(self.baselines_path, json.dumps(baselines, indent=1) + "\n")

    @property
    def final_path(self) -> Path:
        """``test.json``: the test split, evaluated once when training ended."""
        return self.path / self.FINAL

    def read_final(self) -> dict[str, Any] | None:
        if not self.final_path.is_file():
            return None
        return json.loads(self.final_path.read_text(encoding="utf-8"))

    def write_final(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.final_path, json.dumps(record, indent=1) + "\n")

    def log(self, which: str, record: dict[str, Any]) -> None:
        """Append one record to ``losses.jsonl`` or ``metrics.jsonl``."""
        path = self.losses_log if which == "losses" else self.metrics_log
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self, which: str) -> list[dict[str, Any]]:
        return read_jsonl(self.losses_log if which == "losses" else self.metrics_log)

    def truncate_logs(self, max_step: int) -> None:
        """Drop records logged after the checkpoint a run resumes from, and the final test
        evaluation (made again when the resumed run ends)."""
        self.final_path.unlink(missing_ok=True)
        for path in (self.losses_log, self.metrics_log):
            if path.is_file():
                kept = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- checkpoints -----------------------------------------------------------------------
    def commit_checkpoint(self, path: Path, best: bool, info: dict[str, Any]) -> None:
        """After ``path`` is written: make it ``best`` too if asked, then move the pointer.

        ``best`` is a file of its own, so that it stays intact whatever happens to ``last``
        (replaced by the next checkpoint, or damaged: resuming falls back to ``best``). A
        hard link would share the bytes; instead it is a copy-on-write clone where the
        file system makes them (btrfs, XFS: no second write of the data), else a copy.
        """
        if best:
            target = self.checkpoint_path(self.BEST)
            _clone_or_copy(path, target)
            _clone_or_copy(sidecar(path), sidecar(target))
        data = {"file": path.name, **info, "saved_at": timestamp()}
        atomic_write_text(self.checkpoints / self.POINTER, json.dumps(data, indent=1) + "\n")

    # -- creating, locking -----------------------------------------------------------------
    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """Lock (and create or clear) the folder for training.

        A non-empty folder needs ``resume`` (it must hold a checkpoint; nothing is deleted;
        :meth:`resume_candidates` are the files to try; a run made before the marker existed
        gets it) or ``overwrite`` (only a folder restorekit marked as its run,
        :meth:`is_marked`, is cleared). The lock is held until :meth:`release`; a folder this
        call created is removed again by :meth:`release` if no checkpoint was written (a
        failed start leaves nothing).
        """
        if resume and overwrite:
            raise UsageError("use either --resume or --overwrite, not both")
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"run folder {self.path} exists and is not a folder")
        if overwrite and not self.is_empty() and not self.is_marked():
            adopt = " (a run made by an older restorekit: --resume it once to adopt it)" \
                if self.is_run() else ""
            raise UsageError(f"--overwrite: {self.path} is not a restorekit run folder (no "
                             f"{self.MARKER} marker written when restorekit created it); "
                             f"refusing to delete it{adopt}")
        if not self.is_empty() and not self.is_run():
            if resume:
                raise UsageError(f"--resume: {self.path} is not a restorekit run folder")
            raise UsageError(f"run folder {self.path} already exists and is not a run; "
                             f"choose another --name")
        self.lock()
        try:
            if not self.is_empty():
                self._remove_temp_files()
                if resume:
                    if not self.resume_candidates():
                        raise UsageError(f"--resume: {self.path} has no checkpoint (it "
                                         f"stopped before the first save); start it again "
                                         f"with --overwrite")
                elif overwrite:
                    self._clear()
                else:
                    raise UsageError(f"run folder {self.path} already exists; use --resume "
                                     f"to continue it or --overwrite to start over")
            elif resume:
                raise UsageError(f"--resume: no run {self.path}")
            if not self.is_marked():
                self._mark()
            self.checkpoints.mkdir(exist_ok=True)
            self.samples.mkdir(exist_ok=True)
        except BaseException:
            self.release()
            raise

    def lock(self) -> None:
        """Take the folder's OS lock (created with the folder if need be).

        A lock held by a live process is a one-line ``LockError`` naming its PID; the lock
        file of a process that died is taken over with a warning.
        """
        import fcntl

        if self._lock is not None:
            return
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open
        except OSError as exc:
            raise LockError(f"{self.path}: cannot create the run folder's lock file "
                            f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise LockError(f"run folder {self.path} is in use by process {holder} (lock "
                            f"{self.lock_path}); wait for it to finish or stop it") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and previous != str(os.getpid()):
            warn(f"{self.path}: took over the stale lock of process {previous}, which is no "
                 f"longer running")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Release the lock; remove the folder if :meth:`prepare` made it and no checkpoint
        was written (a start that failed)."""
        handle, self._lock = self._lock, None
        if handle is None:
            return
        try:
            if self._created and not self.resume_candidates():
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                handle.seek(0)
                handle.truncate()
        except OSError:
            pass
        finally:
            handle.close()
            self._created = False

    def _clear(self) -> None:
        """Remove everything in the (locked, marked) run folder but the lock and marker."""
        for entry in self.path.iterdir():
            if entry.name in (self.LOCK, self.MARKER):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _remove_temp_files(self) -> None:
        """Delete ``.*.tmp`` files a killed process left (this folder and its subfolders)."""
        for folder in (self.path, self.checkpoints, self.samples):
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                if tmp.is_file() and not tmp.is_symlink():
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    # -- finding runs ----------------------------------------------------------------------
    @classmethod
    def runs_of(cls, runs_dir: str | Path, model: str) -> list[RunDir]:
        """Runs of ``model`` under ``runs_dir`` that hold a checkpoint, oldest first."""
        runs_dir = Path(runs_dir)
        if not runs_dir.is_dir():
            return []
        found = []
        for path in runs_dir.iterdir():
            run = cls(path)
            if not path.is_dir() or not run.has_checkpoint():
                continue
            try:
                if run.read_config().get("model") == model:
                    found.append(run)
            except UsageError:
                continue
        return sorted(found, key=lambda r: r.latest_checkpoint().stat().st_mtime)

    @classmethod
    def newest(cls, runs_dir: str | Path, model: str) -> RunDir | None:
        runs = cls.runs_of(runs_dir, model)
        return runs[-1] if runs else None

    @classmethod
    def next_free(cls, runs_dir: str | Path, base: str) -> RunDir:
        """``runs_dir/base``, or ``base-2``, ``base-3``, ... : the first that is empty."""
        runs_dir = Path(runs_dir)
        run, n = cls(runs_dir / base), 1
        while not run.is_empty():
            n += 1
            run = cls(runs_dir / f"{base}-{n}")
        return run

    @classmethod
    def find_checkpoint(cls, path: str | Path) -> Path:
        """A checkpoint file from a file, a run folder or its ``checkpoints/`` folder.

        For a folder, the newest checkpoint: the model as training left it.
        ``best.safetensors`` (picked on the validation split; the test split of runs made
        before restorekit chose on validation) is used only when named explicitly.
        """
        path = Path(path)
        if path.is_file():
            return path
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint file or run folder")
        run = cls(path.parent) if path.name == cls.CHECKPOINTS else cls(path)
        latest = run.latest_checkpoint()
        if latest is None:
            raise CheckpointError(f"{path}: no checkpoint found (expected "
                                  f"{cls.CHECKPOINTS}/{cls.LAST}{SUFFIX})")
        return latest
