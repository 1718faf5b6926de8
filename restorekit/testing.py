"""Helpers for testing plugins, shipped with restorekit (as pytest ships ``pytester``).

``isolated(...)`` gives a plugin registry that holds the built-ins and exactly the plugins
you pass, never the installed entry points, so a test cannot be broken by another plugin
that happens to be installed (or by the installed copy of the plugin under test)::

    import lumen_plugin
    from restorekit import testing

    @pytest.fixture
    def registry():
        with testing.isolated(lumen=lumen_plugin) as registry:
            yield registry

Inside the ``with`` block ``restorekit.cli.main([...])`` and
``restorekit.plugins.get_registry()`` use the same isolated registry.

``HostReads()`` counts where code reads tensor data back to the host (what makes the host
wait for a GPU), e.g. to check that a training step never does.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from restorekit import errors, plugins


@contextmanager
def isolated(*modules: object, **named: object) -> Iterator[plugins.Registry]:
    """A registry of the built-ins plus ``modules`` (by ``__name__``) and ``named`` plugins.

    No entry point is loaded. The previous plugin manager (and the record of warnings
    already shown) comes back when the block ends.
    """
    saved_manager, saved_warned = plugins._manager, set(errors._warned)
    errors.forget_warnings()
    manager = plugins.PluginManager(load_entry_points=False)
    plugins._manager = manager
    try:
        for module in modules:
            manager.register(module)
        for name, plugin in named.items():
            manager.register(plugin, name=name)
        yield manager.registry
    finally:
        plugins._manager = saved_manager
        errors.forget_warnings()
        errors._warned.update(saved_warned)


class HostReads:
    """Records the host reads of tensor data made on this thread inside ``with``.

    A host read is what makes the host wait for a GPU's queued work: ``.item()``,
    ``float()``/``int()``/``bool()``/formatting of a tensor, ``.tolist()``, ``.numpy()``,
    ``torch.equal``, a copy from another device to the CPU, and the ops whose output size
    depends on the data (``nonzero``, ``masked_select``, ``unique``, indexing with a boolean
    mask). They are counted on CPU tensors too, so that a CPU test finds what would stall a
    GPU. Each read is recorded under the label of the last :meth:`mark`, as "what (file:line)",
    the line being the innermost one outside torch::

        with HostReads() as reads:
            for i in range(3):
                reads.mark(i)
                step()
        assert reads.at(1) == []
    """

    _METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__",
                "__format__", "__repr__")
    _OPS = ("_local_scalar_dense", "equal", "is_nonzero", "nonzero", "masked_select",
            "_unique2", "unique_dim", "unique_consecutive")

    def __init__(self) -> None:
        self.label: Any = None
        self.reads: list[tuple[Any, str]] = []
        self._inside = 0  # in a method that reads: its own ops are not counted again
        self._modes: list[Any] = []

    def mark(self, label: Any) -> None:
        """Record the reads that follow under ``label``."""
        self.label = label

    def at(self, label: Any) -> list[str]:
        """The reads recorded under ``label``."""
        return [what for where, what in self.reads if where == label]

    def __len__(self) -> int:
        return len(self.reads)

    def __enter__(self) -> HostReads:
        self._modes = [_FunctionReads(self), _DispatchReads(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(kind, error, tb)
        self._modes = []

    def _record(self, what: str) -> None:
        torch_dir = os.path.dirname(torch.__file__)
        frames = [f for f in traceback.extract_stack()
                  if not f.filename.startswith(torch_dir) and f.filename != __file__]
        where = f" ({os.path.relpath(frames[-1].filename)}:{frames[-1].lineno})" if frames \
            else ""
        self.reads.append((self.label, what + where))


class _FunctionReads(TorchFunctionMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads
        self.methods = {getattr(torch.Tensor, name): name for name in HostReads._METHODS}

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        name = self.methods.get(func)
        if name is None:
            return func(*args, **(kwargs or {}))
        self.reads._record(f"Tensor.{name}")
        self.reads._inside += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.reads._inside -= 1


class _DispatchReads(TorchDispatchMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads
        self.ops = {getattr(torch.ops.aten, name) for name in HostReads._OPS}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.reads._inside and self._reads(func, args, kwargs):
            self.reads._record(str(func))
        return func(*args, **kwargs)

    def _reads(self, func: Any, args: Any, kwargs: Any) -> bool:
        packet = func.overloadpacket
        if packet in self.ops:
            return True
        if packet is torch.ops.aten.index:  # a boolean mask: its size is read
            return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                       for i in args[1])
        if packet is torch.ops.aten._to_copy:  # to the CPU from another device
            to = kwargs.get("device")
            return to is not None and torch.device(to).type == "cpu" \
                and args[0].device.type != "cpu"
        if packet is torch.ops.aten.copy_:
            return args[0].device.type == "cpu" and args[1].device.type != "cpu"
        return False


class Hung(BaseException):
    """Raised by :func:`deadline` (a BaseException: the CLI's last-resort handler, which
    catches ``Exception``, must not turn it into an error line)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail with :class:`Hung` instead of hanging (e.g. blocked opening a FIFO): SIGALRM
    interrupts the main thread after ``seconds``; a no-op where there is no SIGALRM."""
    def expire(signum: int, frame: object) -> None:
        raise Hung(f"still running after {seconds} s (blocked opening a FIFO?)")

    if not hasattr(signal, "SIGALRM"):  # not POSIX: no FIFOs either
        yield
        return
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_venv(path: str | Path, with_pip: bool = True) -> Path:
    """A throw-away virtual environment at ``path`` that also sees this environment's packages.

    Works from a virtual environment too (``--system-site-packages`` would only see the
    base interpreter's packages): a ``.pth`` file adds this interpreter's site folders, so
    restorekit, torch and the rest are importable without reinstalling them. The new
    environment has its own pip; ``pip install -e PLUGIN`` then builds with a current
    setuptools fetched by build isolation (this needs a package index). ``with_pip=False``
    leaves pip out: ``python -m pip`` is then this environment's pip, for offline installs
    with ``--no-build-isolation``. Returns the new environment's python.
    """
    import site
    import subprocess
    import venv

    path = Path(path)
    venv.create(path, with_pip=with_pip)
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs)
    Path(purelib, "_restorekit_parent_env.pth").write_text(line + "\n", encoding="utf-8")
    return python


def _main(argv: list[str]) -> int:
    """``python -m restorekit.testing venv DIR``."""
    if len(argv) != 2 or argv[0] != "venv":
        print("usage: python -m restorekit.testing venv DIR", file=sys.stderr)
        return 2
    python = make_venv(argv[1])
    print(f"created {argv[1]}; next: {python} -m pip install -e . && "
          f"{python} -m restorekit plugins")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
