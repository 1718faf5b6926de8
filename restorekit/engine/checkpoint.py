"""The checkpoint container: one ``.safetensors`` file plus a JSON sidecar, written atomically.

A checkpoint holds its tensors in one safetensors file and a JSON object of metadata,
stored both as the file's safetensors metadata under the key ``"restorekit"`` (so a lone
file describes itself; this copy is the one loading uses) and in a sidecar ``<name>.json``
next to it for people to read. What the tensors and the metadata mean, and the format's
version, are :mod:`restorekit.engine.state`'s business.

Checkpoints are only ever read with safetensors and ``json``: pickles (``torch.save``
files) are refused, never unpickled.

Where checkpoints live in a run folder is :class:`restorekit.engine.rundir.RunDir`'s
business; this module only knows the file container.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from restorekit.atomic import atomic_path, atomic_write_text
from restorekit.errors import CheckpointError, OutputError, os_reason

METADATA_KEY = "restorekit"
SUFFIX = ".safetensors"

Tensors = dict[str, torch.Tensor]


def timestamp() -> str:
    """Now in UTC, ISO 8601 to the second: the ``saved_at`` of checkpoints and run records."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sidecar(path: Path) -> Path:
    """The JSON sidecar of a checkpoint file."""
    return path.with_suffix(".json")


def first_non_finite(tensors: Tensors) -> str | None:
    """The name of the first floating-point tensor holding inf or NaN, or None."""
    for name, value in tensors.items():
        if (value.is_floating_point() or value.is_complex()) and \
                not bool(torch.isfinite(value).all()):
            return name
    return None


def write_checkpoint(path: Path, tensors: Tensors, meta: dict[str, Any]) -> None:
    """Write ``tensors`` + ``meta`` to ``path`` (.safetensors) and its JSON sidecar, atomically.

    Both files get the usual mode (0666 less the umask). A failed write (full disk,
    read-only folder) is a one-line ``OutputError`` naming the file, and leaves the
    previous checkpoint and no temporary file behind. Callers check the tensors are
    finite first (:func:`first_non_finite`).
    """
    text = json.dumps(meta, indent=1)
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(cpu, str(tmp), metadata={METADATA_KEY: text})
        atomic_write_text(sidecar(path), text + "\n")
    except Exception as exc:  # OSError, or safetensors' own error for a full disk
        raise OutputError(f"{path}: cannot write checkpoint ({os_reason(exc)})") from None


def _refusal(path: Path, reason: str) -> CheckpointError:
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        pass
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return CheckpointError(f"{path}: refusing to load a pickle/torch.save file; restorekit "
                               f"only loads .safetensors checkpoints")
    return CheckpointError(f"{path}: not a valid safetensors checkpoint ({reason})")


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file as stored (tensors are not read).

    Its format version and fields are :mod:`restorekit.engine.state`'s business.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise _refusal(path, " ".join(str(exc).split())) from None
    if raw is None:
        raise CheckpointError(f"{path}: not a restorekit checkpoint "
                              f"(no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not an object)")
    return meta


def read_file(path: str | Path) -> tuple[Tensors, dict[str, Any]]:
    """All tensors (on CPU, checked finite) and the stored metadata of a checkpoint file."""
    path = Path(path)
    meta = read_header(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:
        raise _refusal(path, " ".join(str(exc).split())) from None
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad!r} holds inf or NaN values; the "
                              f"checkpoint is unusable")
    return tensors, meta
