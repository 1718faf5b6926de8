"""``restorekit ext``: is the C++/CUDA extension built, and for which devices."""

from __future__ import annotations

import argparse

from restorekit.api import Command
from restorekit.plugins import Registry


def configure(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace, registry: Registry) -> int:
    from restorekit import ext

    print(ext.describe())
    return 0 if ext.status().get("built") else 1


COMMAND = Command("ext", "status of the C++/CUDA extension", configure, run)
