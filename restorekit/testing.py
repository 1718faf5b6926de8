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
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
