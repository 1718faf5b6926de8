"""The built-in commands, registered through ``register_commands`` like a plugin's.

A new command is one new module with a ``COMMAND`` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from restorekit.cli import ext, metrics, new_plugin, plugins, preprocess, run, tune
from restorekit.hookspecs import hookimpl

COMMANDS = (plugins.COMMAND, preprocess.COMMAND, metrics.COMMAND, run.COMMAND, ext.COMMAND,
            new_plugin.COMMAND, tune.COMMAND)


@hookimpl
def register_commands(register: Callable[..., Any]) -> None:
    """Register every built-in verb."""
    for command in COMMANDS:
        register(command)
