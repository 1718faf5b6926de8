"""What every command shares: the parser class, the error line, input expansion."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from restorekit.errors import OutputError, PluginError, RestorekitError, UsageError, os_reason

PROG = "restorekit"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``UsageError`` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def print_error(exc: RestorekitError) -> int:
    """Print ``restorekit: error: <message>`` on stderr; the exit status to use."""
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return exc.exit_code


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


def output_files(output: Path, inputs: Sequence[Path], files: Sequence[Path],
                 suffix: str = ".png") -> list[Path]:
    """The output file of each input (``output/<stem><suffix>``), after checking the output.

    Refused with one line, before anything is written: ``-o`` equal to or inside an input
    folder, ``-o`` that is a file, and an output that would overwrite one of the inputs.
    The output folder is created.
    """
    out = output.resolve()
    for given in inputs:
        if given.is_dir():
            folder = given.resolve()
            if out == folder or folder in out.parents:
                raise UsageError(f"-o {output}: is the input folder {given} or inside it; "
                                 f"choose an output folder outside the inputs")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: exists and is not a folder")
    sources = {f.resolve() for f in files}
    targets = [output / f"{f.stem}{suffix}" for f in files]
    for target in targets:
        if target.resolve() in sources:
            raise UsageError(f"-o {output}: {target} is also an input; refusing to "
                             f"overwrite it")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the output folder "
                          f"({os_reason(exc)})") from None
    return targets


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (an infinite PSNR) as ``None`` (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
