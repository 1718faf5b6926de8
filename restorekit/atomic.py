"""Atomic file writes: a temp file beside the target, fsync, rename over it, fsync the folder.

A crash (or a full disk) at any moment leaves either the old file or the new one, never a
half-written file under the target's name; the temp file of a failed write is removed.
Every restorekit file that must not be seen half-written (images, checkpoints, run and
study files) goes through :func:`atomic_path`. Only the standard library is used, so every
layer may import this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_copy", "atomic_path", "atomic_write_text"]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform can open folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _usual_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open`` would (0666 less the umask), not mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temp file beside ``path`` to write; when the block ends without an error it
    gets the usual mode, is fsynced and renamed over ``path`` (and the folder is fsynced).

    On any error the temp file is removed and ``path`` is left as it was. The parent
    folder must exist. Note that ``os.replace`` replaces a symbolic link at ``path``
    itself (it never writes through it); callers that must not replace links check first.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _usual_mode(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
