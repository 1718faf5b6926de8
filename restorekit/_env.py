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
