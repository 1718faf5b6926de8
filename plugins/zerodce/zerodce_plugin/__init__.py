"""restorekit-zerodce: a third-party restorekit plugin.

It registers the ``zerodce`` model (Zero-DCE, Guo et al., CVPR 2020: a tiny CNN that
estimates pixel-wise light-enhancement curves, trained with non-reference losses only)
and the ``retinex`` preprocessor (multi-scale Retinex with colour restoration). Heavy
imports (torch) happen inside the hooks, so ``restorekit plugins`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from restorekit import Preprocessor, hookimpl

RESTOREKIT_API = 1
"""The restorekit plugin API this plugin is written against."""

__version__ = "0.1.0"


@hookimpl
def register_preprocessors(register: Callable[..., Any]) -> None:
    """Register ``retinex``."""
    from zerodce_plugin.retinex import DEFAULTS, retinex

    register(Preprocessor("retinex", retinex, params=DEFAULTS,
                          description="multi-scale Retinex with colour restoration "
                                      "(MSRCR-lite)"))


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register ``zerodce``."""
    from zerodce_plugin.model import ZeroDCE

    register(ZeroDCE)
