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
