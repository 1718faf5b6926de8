"""Reading restorekit's environment switches."""

from __future__ import annotations

import os

from restorekit.errors import RestorekitError


def env_choice(name: str, choices: tuple[str, ...], error: type[RestorekitError]) -> str:
    """The value of env var ``name``, one of ``choices`` (the first when unset or empty).

    Case and surrounding blanks are ignored; any other value raises ``error`` with one line.
    """
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise error(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def flag(name: str) -> bool:
    """True when env var ``name`` is set to anything but empty or "0"."""
    return os.environ.get(name, "").strip() not in ("", "0")


def trace_plugins() -> bool:
    """``RESTOREKIT_TRACE_PLUGINS=1``: log plugin loading and show plugin tracebacks."""
    return flag("RESTOREKIT_TRACE_PLUGINS")


def strict_plugins() -> bool:
    """``RESTOREKIT_STRICT_PLUGINS=1``: every plugin failure is an error."""
    return flag("RESTOREKIT_STRICT_PLUGINS")
