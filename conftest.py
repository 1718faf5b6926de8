"""Shared fixtures: every test starts with a fresh plugin manager and no plugin env vars."""

from __future__ import annotations

from pathlib import Path

import pytest

from restorekit import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    for var in ("RESTOREKIT_DISABLE_PLUGINS", "RESTOREKIT_STRICT_PLUGINS",
                "RESTOREKIT_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def offline_build() -> None:
    """Skip (with the reason) where pip cannot build a wheel without a package registry.

    Tests that install a checkout into a throw-away venv use ``--no-build-isolation`` with
    this interpreter's setuptools, which needs ``bdist_wheel`` (setuptools >= 70.1 or the
    ``wheel`` package).
    """
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip in the interpreter running the tests")
    try:
        import setuptools  # the copy pip's --no-build-isolation will use
    except ImportError:
        pytest.skip("needs setuptools to build a wheel offline (no package registry is used)")
    version = setuptools.__version__
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {version} cannot build a wheel without the 'wheel' package, "
                    "and no package registry is used")


def make_venv(path: Path) -> Path:
    """A throw-away venv that sees every package this interpreter sees; its python.

    ``--system-site-packages`` alone exposes the *base* interpreter's packages, so when the
    tests run inside a venv (as on machines whose torch lives in one) that venv's
    site-packages, .pth files included, are added through a .pth file of the new venv.
    """
    import site
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(path)], check=True, timeout=120)
    py = path / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                 "['purelib'])"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
        (Path(target) / "_parent_env.pth").write_text(lines)
    return py


@pytest.fixture(scope="module")
def restorekit_ops():
    """``torch.ops.restorekit``, built once (the first build takes a minute or two)."""
    import torch

    import restorekit.ext as ext
    from restorekit.ext import _build

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESTOREKIT_EXT", "on")
        st = _build.ensure()
        if not st.ok:
            pytest.fail(f"extension failed to build: {st.error}\n{st.log}")
        assert ext.load()
    return torch.ops.restorekit
