"""Shared fixtures: every test starts with a fresh plugin manager and no plugin env vars."""

from __future__ import annotations

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
    import subprocess
    import sys

    if importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip in the interpreter running the tests")
    # The setuptools that pip's --no-build-isolation will import (asked in a child process:
    # importing it here, after distutils, trips setuptools' distutils hack).
    ask = "import setuptools; print(setuptools.__version__)"
    proc = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("needs setuptools to build a wheel offline (no package registry is used)")
    version = proc.stdout.strip()
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {version} cannot build a wheel without the 'wheel' package, "
                    "and no package registry is used")


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
