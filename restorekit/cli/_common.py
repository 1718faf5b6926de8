"""What every command shares: the parser class, the error line, input expansion."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from restorekit.errors import PluginError, RestorekitError, UsageError

PROG = "restorekit"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``UsageError`` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def print_error(exc: RestorekitError) -> int:
    """Print ``restorekit: error: <message>`` on stderr; the exit status to use."""
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return exc.exit_code


def warn(message: str) -> None:
    """``restorekit: warning: <message>`` on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def lookup(getter: Callable[[str], Any], name: str, option: str) -> Any:
    """``getter(name)``; an unknown or contested name is a usage error naming ``option``."""
    try:
        return getter(name)
    except PluginError as exc:
        raise UsageError(f"{option}: {exc}") from None


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Image files from files and folders; outputs are named by stem, so stems must differ."""
    from restorekit.data import list_images

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UsageError(f"{path}: folder holds no images")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    stems = [f.stem for f in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise UsageError(f"several inputs share the stem {clash[0]!r}; outputs would collide")
    return files
