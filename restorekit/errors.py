"""Errors that reach the user as one clear line."""

from __future__ import annotations


class RestorekitError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits 1."""

    exit_code = 1


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


class TrainingError(RestorekitError):
    """Training cannot go on (for example a non-finite loss)."""


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """``Type: message`` (or the message alone) on one line, blank runs collapsed."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}" if with_type else text
