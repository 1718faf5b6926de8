"""The hooks a restorekit plugin can implement.

Each hook receives a ``register`` callback, so one plugin can contribute many
named items. ``register`` takes one item (and may gain keyword arguments later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "restorekit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_preprocessors(register: Callable[..., Any]) -> None:
    """Register image -> image transforms: call ``register(Preprocessor(...))``."""


@hookspec
def register_models(register: Callable[..., Any]) -> None:
    """Register enhancement models: call ``register(MyModel)`` with a ``Model`` subclass."""


@hookspec
def register_metrics(register: Callable[..., Any]) -> None:
    """Register metrics: ``register(Metric(...))`` (full-reference) or
    ``register(NoReferenceMetric(...))`` (no ground truth)."""


@hookspec
def register_commands(register: Callable[..., Any]) -> None:
    """Register ``restorekit`` verbs: call ``register(Command(...))``."""
