"""Building, caching and loading the C++/CUDA sources (``csrc/`` at the top of the checkout).

The build runs once per (sources, torch, flags, CPU, CUDA) combination with
``torch.utils.cpp_extension.load`` (ninja) into a cache directory keyed by a hash of all of
them; later processes load the cached library directly. A failed build is kept (one-line
reason plus the full compiler output, also written to ``build.log``) and never retried within
the same process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from restorekit._env import env_choice
from restorekit.errors import RestorekitError, warn

ENV_MODE = "RESTOREKIT_EXT"
ENV_CACHE = "RESTOREKIT_CACHE"
MODES = ("auto", "off", "on")

_CFLAGS = ["-O3", "-fopenmp", "-march=native"]
_CUDA_CFLAGS = ["-O3"]
_MARKER = "restorekit-ext.ok"


class ExtensionError(RestorekitError):
    """The extension cannot be used as configured (bad RESTOREKIT_EXT value, ...)."""


class ExtensionBuildError(ExtensionError):
    """The C++/CUDA extension failed to build.

    The message is one line (the compiler's first error and where the full log is);
    ``log`` holds the compiler's whole output.
    """

    def __init__(self, message: str, log: str = "", log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.log_path = log_path


@dataclass
class BuildState:
    """What happened when this process tried to build or load the extension."""

    attempted: bool = False
    ok: bool = False
    devices: tuple[str, ...] = ()
    cache_dir: Path | None = None
    library: Path | None = None
    from_cache: bool = False
    seconds: float = 0.0
    error: str | None = None
    log: str = ""
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def raise_error(self) -> None:
        """Raise the build failure as an :class:`ExtensionBuildError`."""
        where = f" (full log: {self.log_path})" if self.log_path else ""
        raise ExtensionBuildError(
            f"restorekit extension build failed: {self.error}{where}", self.log, self.log_path
        )


_STATE = BuildState()
_LOCK = threading.RLock()
_REGISTERED_LIBRARY: Path | None = None


def mode() -> str:
    """The selection mode from ``RESTOREKIT_EXT``: ``auto`` (default), ``off`` or ``on``."""
    return env_choice(ENV_MODE, MODES, ExtensionError)


def source_dir() -> Path:
    """The C++/CUDA sources: ``csrc/`` beside the package in a checkout (editable install).

    A wheel or ``pip install .`` ships them inside the package as ``restorekit/ext/csrc``
    (pyproject.toml maps ``csrc/`` there), so every install builds the same sources on first use.
    """
    here = Path(__file__).resolve().parent
    installed, checkout = here / "csrc", here.parents[1] / "csrc"
    return checkout if not installed.is_dir() and checkout.is_dir() else installed


def cache_root() -> Path:
    """``$RESTOREKIT_CACHE/ext``, else ``$XDG_CACHE_HOME/restorekit/ext`` or ``~/.cache/...``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser() / "ext"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "restorekit" / "ext"


def cuda_wanted() -> bool:
    """Whether the CUDA sources are built: torch sees a GPU and the toolkit is installed."""
    from torch.utils.cpp_extension import CUDA_HOME

    return bool(torch.version.cuda) and torch.cuda.is_available() and CUDA_HOME is not None


def cpu_id() -> str:
    """Identity of this CPU model and its instruction-set flags (the build uses -march=native)."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            keys = ("model name", "flags", "features", "cpu part", "cpu implementer")
            seen: set[str] = set()
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in keys and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        pass
    return "\n".join(parts)


def source_files(src: Path, with_cuda: bool) -> tuple[list[Path], list[Path]]:
    """(files to compile, every file that goes into the cache key)."""
    compiled = [src / "registration.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    if with_cuda:
        compiled += sorted((src / "cuda").glob("*.cpp")) + sorted((src / "cuda").glob("*.cu"))
    hashed = sorted(
        p for p in src.rglob("*") if p.is_file() and p.suffix in {".cpp", ".h", ".cu", ".cuh"}
    )
    return compiled, hashed


def build_key(src: Path, with_cuda: bool) -> str:
    """Hash of sources, torch/CUDA/Python versions, flags and CPU."""
    _, hashed = source_files(src, with_cuda)
    h = hashlib.sha256()
    for p in hashed:
        h.update(str(p.relative_to(src)).encode())
        h.update(p.read_bytes())
    meta = [
        torch.__version__,
        str(torch.version.cuda),
        sys.version,
        " ".join(_CFLAGS),
        " ".join(_CUDA_CFLAGS) if with_cuda else "cpu-only",
        os.environ.get("CXX", ""),
        cpu_id(),
    ]
    h.update("\0".join(meta).encode())
    return h.hexdigest()[:16]


def _summary(log: str) -> str:
    """The first compiler error line of a build log (or its last line)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pattern in (r":\d+(:\d+)?: (fatal )?error", r"\berror\b"):
        for ln in lines:
            if re.search(pattern, ln, re.IGNORECASE) and not ln.startswith(
                ("FAILED", "Error building extension")
            ):
                return ln
    return lines[-1] if lines else "unknown error"


def state() -> BuildState:
    """The current build state (not attempted until something needs the extension)."""
    return _STATE


def ensure(verbose: bool = False) -> BuildState:
    """Build or load the extension once per process and register its Python parts."""
    global _STATE
    with _LOCK:
        st = _STATE
        if st.attempted:
            return st
        st.attempted = True
        t0 = time.perf_counter()
        try:
            _build_and_load(st, verbose)
            st.ok = True
        except RestorekitError:  # e.g. a SIGTERM turned into Stopped: not a build failure
            st.error = "interrupted while building"
            raise
        except Exception as exc:  # the compiler's failure is kept, never swallowed
            st.ok = False
            st.log = str(exc)
            st.error = _summary(st.log) if st.log else type(exc).__name__
            if st.cache_dir is not None:
                try:
                    st.cache_dir.mkdir(parents=True, exist_ok=True)
                    st.log_path = st.cache_dir / "build.log"
                    st.log_path.write_text(st.log, encoding="utf-8")
                except OSError:
                    st.log_path = None
        st.seconds = time.perf_counter() - t0
        return st


def _build_and_load(st: BuildState, verbose: bool) -> None:
    global _REGISTERED_LIBRARY
    src = source_dir()
    if not (src / "registration.cpp").is_file():
        raise FileNotFoundError(f"restorekit C++ sources not found in {src}")
    with_cuda = cuda_wanted()
    st.devices = ("cpu", "cuda") if with_cuda else ("cpu",)
    key = build_key(src, with_cuda)
    st.cache_dir = cache_root() / key
    name = f"restorekit_ext_{key}"
    library = st.cache_dir / f"{name}.so"
    st.library = library
    if _REGISTERED_LIBRARY is not None:
        if library != _REGISTERED_LIBRARY:
            raise RuntimeError(
                f"another restorekit extension ({_REGISTERED_LIBRARY}) is already loaded in this "
                "process; restart Python to load a different build"
            )
        st.from_cache = True
        return
    marker = st.cache_dir / _MARKER
    if not (marker.is_file() and library.is_file()):
        with _build_lock(st.cache_dir):
            if not (marker.is_file() and library.is_file()):  # nobody built it meanwhile
                _compile(st, src, name, with_cuda, verbose)
                marker.write_text(f"torch {torch.__version__}\ndevices "
                                  f"{' '.join(st.devices)}\n")
                st.from_cache = False
            else:
                st.from_cache = True
    else:
        st.from_cache = True
    if st.from_cache:
        torch.ops.load_library(str(library))
    _REGISTERED_LIBRARY = library
    from restorekit.ext import _ops

    _ops.register()


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """One builder per cache folder, by an OS lock the kernel releases when its holder dies.

    torch's own build lock is a plain ``lock`` file (``FileBaton``): a build that was killed
    leaves it behind and every later build waits for it forever. Whoever holds this OS lock
    is the only builder alive, so such a file is stale and is removed.
    """
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".build.flock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # waits for a live builder only
        try:
            (cache_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _compile(st: BuildState, src: Path, name: str, with_cuda: bool, verbose: bool) -> None:
    """Compile the sources into ``st.cache_dir`` with ninja and load the library."""
    from torch.utils.cpp_extension import load

    _check_compiler()
    compiled, _ = source_files(src, with_cuda)
    load(
        name=name,
        sources=[str(p) for p in compiled],
        extra_cflags=list(_CFLAGS),
        extra_cuda_cflags=list(_CUDA_CFLAGS),
        extra_include_paths=[str(src)],
        build_directory=str(st.cache_dir),
        verbose=verbose,
        with_cuda=with_cuda,
        is_python_module=False,
    )


def _check_compiler() -> None:
    """Name a missing C++ compiler (else ninja only says "build stopped")."""
    import shlex
    import shutil

    cxx = os.environ.get("CXX", "").strip() or "c++"
    program = (shlex.split(cxx) or ["c++"])[0]
    if shutil.which(program) is None:
        raise RuntimeError(f"no C++ compiler: {program!r} (from CXX, default c++) is not on "
                           f"PATH; install g++ or clang, or set CXX")


def warn_fallback(st: BuildState) -> None:
    """One warning line for RESTOREKIT_EXT=auto falling back to plain PyTorch."""
    where = f" (log: {st.log_path})" if st.log_path else ""
    warn(f"restorekit extension unavailable, using plain PyTorch: {st.error}{where}")
