"""The ``restorekit`` command line: one module per command, all registered as plugins.

Every verb, built-in or from a plugin, is a :class:`restorekit.Command` registered
through the ``register_commands`` hook (the built-ins in :mod:`restorekit.cli.commands`).
``main`` loads the plugins once, builds the parser from the registered commands and hands
the chosen command its parsed arguments and the registry.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from restorekit._env import trace_plugins
from restorekit._version import __version__
from restorekit.api import Command
from restorekit.cli._common import PROG, Parser, print_error
from restorekit.errors import RestorekitError, one_line, os_reason, warn
from restorekit.plugins import Registry, get_registry

__all__ = ["PROG", "Parser", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``restorekit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        registry = get_registry()
        args = build_parser(registry).parse_args(argv)
        command: Command = args.command_obj
        return int(command.run(args, registry) or 0)
    except RestorekitError as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a last resort: still one line (the traceback on request)
        if trace_plugins():
            traceback.print_exc(file=sys.stderr)
        what = os_reason(exc) if isinstance(exc, OSError) else \
            f"unexpected {one_line(exc)} (RESTOREKIT_TRACE_PLUGINS=1 shows the traceback)"
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 1


def build_parser(registry: Registry) -> argparse.ArgumentParser:
    """The ``restorekit`` parser with one subcommand per registered command."""
    parser = Parser(prog=PROG, description="Image restoration toolkit: low-light "
                    "enhancement with GANs, extensible through plugins.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                metavar="COMMAND")
    for name, command in registry.items["commands"].items():
        owner = registry.owners["commands"][name]
        if name in registry.conflicts["commands"] and \
                registry.plugins[owner].source != "built-in":
            continue  # two plugins claim the verb: neither gets it (the warning said so)
        _add_command(sub, name, command)
    for qualified_names in registry.conflicts["commands"].values():
        for name in qualified_names:  # a contested verb is there as PLUGIN:VERB too
            _add_command(sub, name, registry.qualified["commands"][name])
    return parser


def _add_command(sub: argparse._SubParsersAction, name: str, command: Command) -> None:
    p = sub.add_parser(name, help=command.help, add_help=command.add_help,
                       description=command.help)
    try:
        command.configure(p)
    except Exception as exc:  # a broken plugin command must not take the CLI down
        sub._name_parser_map.pop(name, None)
        sub._choices_actions = [a for a in sub._choices_actions if a.dest != name]
        warn(f"command {name!r} of plugin {command.plugin!r} skipped: its configure raised "
             f"{one_line(exc)}")
        return
    p.set_defaults(command_obj=command)


if __name__ == "__main__":
    sys.exit(main())
