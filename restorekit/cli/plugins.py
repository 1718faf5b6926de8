"""``restorekit plugins``: every plugin, what it registers, load failures and conflicts."""

from __future__ import annotations

import argparse
import dataclasses
import json

from restorekit.api import Command
from restorekit.plugins import KINDS, Registry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hooks", action="store_true",
                        help="show which plugin implements which hook")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, registry: Registry) -> int:
    infos = list(registry.plugins.values())
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    for info in infos:
        if info.error:
            status = f"FAILED: {info.error}"
        elif info.conflicts:
            status = "ok, with name conflicts"
        else:
            status = "ok"
        print(f"{info.name}  {info.version}  ({info.source})  {status}")
        for kind in KINDS:
            if info.registered[kind]:
                print(f"    {kind}: {', '.join(info.registered[kind])}")
        for line in info.conflicts:
            print(f"    conflict: {line}; unusable until one plugin is disabled "
                  f"(RESTOREKIT_DISABLE_PLUGINS)")
        if args.hooks and info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    return 0


COMMAND = Command("plugins", "list plugins and what they register", configure, run)
