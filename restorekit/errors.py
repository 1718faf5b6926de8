"""Errors (and warnings) that reach the user as one clear line."""

from __future__ import annotations

import re
import sys

_WORKER_MARK = "\nOriginal Traceback (most recent call last):"


class RestorekitError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits 1."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        # A DataLoader worker re-raises our error as ``Type("Caught Type in DataLoader worker
        # ...\nOriginal Traceback ...\nType: message")``: keep the one-line message, so an
        # error in a worker reads exactly as it does with --num-workers 0.
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_MARK in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            name = re.escape(type(self).__name__)
            args = (re.sub(rf"^(?:[\w.]+\.)?{name}: ", "", last),)
        super().__init__(*args)


class UsageError(RestorekitError):
    """A bad option or argument; the CLI exits 2."""

    exit_code = 2


class ImageReadError(RestorekitError):
    """An image file that cannot be read (missing, corrupt, truncated, unknown format)."""


class DataError(RestorekitError):
    """A data set that cannot be used: missing pair, size mismatch, empty folder."""


class PluginError(RestorekitError):
    """A plugin that cannot be loaded or registers something invalid."""


class CheckpointError(RestorekitError):
    """A checkpoint that is missing, corrupt or unsafe to load."""


class LockError(RestorekitError):
    """A run folder in use by another process."""


class OutputError(RestorekitError):
    """An output that cannot be written (a file in the way, a read-only folder, a full disk)."""


class TrainingError(RestorekitError):
    """Training cannot go on (for example a non-finite loss)."""


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """``Type: message`` (or the message alone) on one line, blank runs collapsed."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}" if with_type else text


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a value quoted in an error line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def os_reason(exc: BaseException) -> str:
    """An ``OSError`` as ``strerror`` (plus the file it names), else :func:`one_line`."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return one_line(exc, with_type=False)


_warned: set[str] = set()


def warn(message: str, once: bool = False, key: str | None = None) -> None:
    """``restorekit: warning: message`` on stderr, above any progress bar.

    The one way restorekit warns. ``once``: only the first time this message (or, given,
    this ``key``: the same problem in other words) is given in this process (until
    :func:`forget_warnings`).
    """
    if once:
        seen = message if key is None else key
        if seen in _warned:
            return
        _warned.add(seen)
    from tqdm import tqdm

    tqdm.write(f"restorekit: warning: {message}", file=sys.stderr)


def forget_warnings() -> None:
    """Show the ``once`` warnings again (``plugins.reset`` calls it)."""
    _warned.clear()
