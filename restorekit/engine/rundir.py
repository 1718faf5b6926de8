"""One run folder: the only code that knows the layout of ``runs/<name>/``.

Layout::

    config.json          what was trained on what (model, options, preprocess, data, versions)
    checkpoints/         last.safetensors (+ .json sidecar), best.safetensors, latest.json
    losses.jsonl         loss terms every ``log_every`` steps
    metrics.jsonl        test metrics after each evaluation
    baselines.json       identity and best-classic rows, computed once per run
    samples/             epoch_NNN.png sample grids (low | enhanced | ground truth)
    report.html          with losses.svg and metrics.svg
    tensorboard/         event files, with ``--tensorboard``

The model's options and preprocessing live in the checkpoints (a lone checkpoint file
describes itself); ``config.json`` holds what is not in a checkpoint (the data path and
run history) and a readable copy of the rest. Resuming and loading both read the options
from the checkpoint, nowhere else.

Every write into a run folder goes through this class, so the later additions (a lock
against two trainers in one folder, safe ``--overwrite``, cleaning up stray temp files)
have one place to go: :meth:`prepare`.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from restorekit.engine.checkpoint import SUFFIX, sidecar
from restorekit.engine.files import atomic_copy, atomic_write_text
from restorekit.errors import CheckpointError, UsageError


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    SAMPLES = "samples"
    REPORT = "report.html"
    LOSSES_SVG = "losses.svg"
    METRICS_SVG = "metrics.svg"
    TENSORBOARD = "tensorboard"
    LAST = "last"
    BEST = "best"
    POINTER = "latest.json"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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

    # -- state -----------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.path.is_dir() or not any(self.path.iterdir())

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint (``latest.json``, else ``last.safetensors``), or None."""
        pointer = self.checkpoints / self.POINTER
        if pointer.is_file():
            try:
                name = json.loads(pointer.read_text(encoding="utf-8"))["file"]
            except (OSError, ValueError, KeyError, TypeError):
                raise CheckpointError(f"{pointer}: corrupt checkpoint pointer") from None
            target = self.checkpoints / name
            if not target.is_file():
                raise CheckpointError(f"{pointer}: points to missing file {target}")
            return target
        last = self.checkpoint_path(self.LAST)
        return last if last.is_file() else None

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
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{self.config_path} is corrupt ({exc})") from None
        return config if isinstance(config, dict) else {}

    def write_config(self, config: dict[str, Any], resumed: bool = False) -> None:
        """Write ``config.json``, keeping ``started_at`` and the ``resumed_at`` history."""
        old = self.read_config()
        config = {**config, "run": self.name,
                  "started_at": old.get("started_at", _now()),
                  "resumed_at": old.get("resumed_at", []) + ([_now()] if resumed else [])}
        atomic_write_text(self.config_path, json.dumps(config, indent=1) + "\n")

    def read_baselines(self) -> dict[str, dict[str, float]] | None:
        if not self.baselines_path.is_file():
            return None
        return json.loads(self.baselines_path.read_text(encoding="utf-8"))

    def write_baselines(self, baselines: dict[str, dict[str, float]]) -> None:
        atomic_write_text(self.baselines_path, json.dumps(baselines, indent=1) + "\n")

    def log(self, which: str, record: dict[str, Any]) -> None:
        """Append one record to ``losses.jsonl`` or ``metrics.jsonl``."""
        path = self.losses_log if which == "losses" else self.metrics_log
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self, which: str) -> list[dict[str, Any]]:
        return read_jsonl(self.losses_log if which == "losses" else self.metrics_log)

    def truncate_logs(self, max_step: int) -> None:
        """Drop records logged after the checkpoint a run resumes from."""
        for path in (self.losses_log, self.metrics_log):
            if path.is_file():
                kept = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- checkpoints -----------------------------------------------------------------------
    def commit_checkpoint(self, path: Path, best: bool, info: dict[str, Any]) -> None:
        """After ``path`` is written: copy it to ``best`` if asked, then move the pointer."""
        if best:
            target = self.checkpoint_path(self.BEST)
            atomic_copy(path, target)
            atomic_copy(sidecar(path), sidecar(target))
        data = {"file": path.name, **info, "saved_at": _now()}
        atomic_write_text(self.checkpoints / self.POINTER, json.dumps(data, indent=1) + "\n")

    # -- creating --------------------------------------------------------------------------
    def prepare(self, resume: bool = False, overwrite: bool = False) -> Path | None:
        """Create (or clear) the folder for training; the checkpoint to resume from, if any.

        A non-empty folder needs ``resume`` (it must hold a checkpoint) or ``overwrite``.
        """
        if resume and overwrite:
            raise UsageError("use either --resume or --overwrite, not both")
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"run folder {self.path} exists and is not a folder")
        resume_from = None
        if not self.is_empty():
            if resume:
                resume_from = self.latest_checkpoint()
                if resume_from is None:
                    raise UsageError(f"--resume: {self.path} has no checkpoint (it stopped "
                                     f"before the first save); start it again with "
                                     f"--overwrite")
            elif overwrite:
                shutil.rmtree(self.path)
            else:
                raise UsageError(f"run folder {self.path} already exists; use --resume to "
                                 f"continue it or --overwrite to start over")
        elif resume:
            raise UsageError(f"--resume: no run {self.path}")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.samples.mkdir(exist_ok=True)
        return resume_from

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
        ``best.safetensors`` was picked by test-split PSNR, so it is used only when named
        explicitly (choosing on the test split flatters the scores).
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
