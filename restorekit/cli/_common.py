"""What every command shares: the parser class, the error line, input expansion."""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from restorekit.errors import OutputError, PluginError, RestorekitError, UsageError, os_reason
from restorekit.plugins import Registry

PROG = "restorekit"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``UsageError`` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def number(kind: type, flag: str, spec: Any = None) -> Callable[[str], Any]:
    """An argparse ``type=`` reading ``flag``'s value as ``kind`` (int or float) inside the
    range ``spec`` (see :func:`restorekit.api.check_range`; None: any 64-bit number).

    ``1e20`` for an integer, a word, an integer beyond 64 bits or a value out of range is a
    one-line ``UsageError`` naming ``flag`` and the range, before anything is allocated.
    """
    from restorekit.api import check_range, range_text

    spec = spec or (None, None)

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"{flag}: expected {what} in {range_text(spec)}, "
                             f"got {text!r}") from None
        problem = check_range(value, spec)
        if problem:
            raise UsageError(f"{flag}: {problem}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its own messages
    return convert


def add_metric_files(parser: Any, lpips_use: str = "") -> None:
    """``--lpips-weights FILE`` and ``--niqe-params FILE``: the metrics built from local files
    (``lpips_use`` says where LPIPS is added, e.g. "to --eval and the training report")."""
    parser.add_argument("--lpips-weights", type=Path, default=None, metavar="FILE",
                        help=f"add LPIPS (AlexNet, v0.1){' ' + lpips_use if lpips_use else ''} "
                             f"from this local safetensors file (docs/metrics.md says how to "
                             f"make it)")
    parser.add_argument("--niqe-params", type=Path, default=None, metavar="FILE",
                        help="add NIQE with the pristine model of this .npz/.mat file "
                             "(docs/metrics.md)")


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
    """Image files from files and folders; outputs are named by stem, so stems must differ.

    A file named directly must be a regular file (a FIFO would block ``open`` forever);
    folders are listed by :func:`restorekit.data.list_images`, which skips anything else.
    """
    from restorekit.data import check_image_file, list_images

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UsageError(f"{path}: folder holds no images")
            files.extend(found)
        elif os.path.lexists(path):
            check_image_file(path)
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    first: dict[str, Path] = {}
    for f in files:
        if f.stem in first:
            raise UsageError(f"{first[f.stem]} and {f} share the stem {f.stem!r}; both "
                             f"outputs would be named {f.stem}.png")
        first[f.stem] = f
    return files


def output_files(output: Path, inputs: Sequence[Path], files: Sequence[Path],
                 suffix: str = ".png", overwrite: bool = False) -> list[Path]:
    """The output file of each input (``output/<stem><suffix>``), after checking the output.

    Refused with one line, before anything is written: ``-o`` equal to or inside an input
    folder, ``-o`` that is a file, and any output that would replace something: an input
    (the same file by device and inode, so also a hard link), a symbolic link (never
    followed, never replaced), anything but a regular file, and, unless ``overwrite``, any
    existing file. The output folder is created.
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
    sources = {(st.st_dev, st.st_ino) for st in map(os.stat, files)}  # hard links too
    targets = [output / f"{f.stem}{suffix}" for f in files]
    existing = []
    for target in targets:
        if target.is_symlink():
            raise UsageError(f"-o {output}: {target} is a symbolic link (to "
                             f"{os.readlink(target)}); refusing to write through or "
                             f"replace it")
        try:
            st = target.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OutputError(f"{target}: cannot check the output ({os_reason(exc)})") from None
        if (st.st_dev, st.st_ino) in sources:
            raise UsageError(f"-o {output}: {target} is also an input; refusing to "
                             f"overwrite it")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"-o {output}: {target} exists and is not a regular file; "
                             f"refusing to replace it")
        existing.append(target)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(f"-o {output}: {existing[0]} already exists{more}; refusing to "
                         f"replace it (choose another -o folder, or --overwrite)")
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


def usable_names(registry: Registry, kind: str) -> list[tuple[str, Any]]:
    """``(name, item)`` of every item of ``kind`` by the name to type: the bare name, or
    ``PLUGIN:NAME`` where several plugins register the bare one."""
    return [(q if q.rpartition(":")[2] in registry.conflicts[kind] else q.rpartition(":")[2],
             item) for q, item in registry.qualified[kind].items()]
