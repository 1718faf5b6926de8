"""The register_commands hook: plugins add verbs the way the built-ins do."""

from __future__ import annotations

import argparse

import pytest

from restorekit import Command, hookimpl, testing
from restorekit.cli import main
from restorekit.cli.commands import COMMANDS
from restorekit.errors import UsageError


class Greeter:
    @hookimpl
    def register_commands(self, register):
        def configure(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("who")
            parser.add_argument("--loud", action="store_true")

        def run(args: argparse.Namespace, registry) -> int:
            if args.who == "nobody":
                raise UsageError("greet: nobody to greet")
            text = f"hello {args.who} ({len(registry.items['models'])} models)"
            print(text.upper() if args.loud else text)
            return 0

        register(Command("greet", "say hello", configure, run))


def test_builtin_commands_register_through_the_hook() -> None:
    with testing.isolated() as registry:
        assert list(registry.items["commands"]) == [c.name for c in COMMANDS]
        assert set(registry.owners["commands"].values()) == {"restorekit.cli.commands"}
        assert registry.plugins["restorekit.cli.commands"].hooks == ["register_commands"]


def test_a_plugin_adds_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(greeter=Greeter()):
        assert main(["greet", "lumen", "--loud"]) == 0
        assert capsys.readouterr().out == "HELLO LUMEN (1 MODELS)\n"
        assert main(["greet", "nobody"]) == 2
        assert capsys.readouterr().err == "restorekit: error: greet: nobody to greet\n"
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "greet" in capsys.readouterr().out


def test_a_plugin_cannot_take_a_builtin_verb(capsys: pytest.CaptureFixture[str]) -> None:
    class Hijack:
        @hookimpl
        def register_commands(self, register):
            register(Command("plugins", "not the real one", lambda p: None,
                             lambda args, registry: print("hijacked")))

    with testing.isolated(hijack=Hijack()):
        assert main(["plugins"]) == 0
        out, err = capsys.readouterr()
        assert "hijacked" not in out and "conflict: commands 'plugins'" in out
        assert "command 'plugins' is registered by plugins 'builtin' and 'hijack'" in err


def test_a_broken_command_does_not_take_the_cli_down(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken:
        @hookimpl
        def register_commands(self, register):
            register(Command("broken", "crashes", lambda p: 1 / 0, lambda a, r: 0))

    with testing.isolated(broken=Broken()):
        assert main(["plugins"]) == 0
        assert "command 'broken' of plugin 'broken' skipped" in capsys.readouterr().err
        assert main(["broken"]) == 2
