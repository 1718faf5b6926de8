"""docs/plugins.md cannot rot: every code block in it is run or checked here. The README
keeps its two-command Quick start, and its links reach real files and headings.

* ```toml and ```python blocks whose first line is ``# file: PATH`` are written into a
  temporary plugin package (``(continued)`` blocks are appended); the package is loaded
  through its entry point (a dist-info on sys.path built from the pyproject block), shown
  by ``restorekit plugins``, its own tests run with pytest and its model trained and
  evaluated through the CLI in-process.
* Other ```python blocks run as scripts with the tutorial plugin installed.
* ```console blocks: every ``$ restorekit ...`` line parses with the real CLI parser (and,
  for ``run MODEL``, with that model's parser); output lines shown after
  ``$ restorekit plugins`` must appear in the real output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from restorekit import plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
README = DOC.parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_MARK = re.compile(r"^# file: (\S+)( \(continued\))?\n")
KNOWN_ENV = {"RESTOREKIT_DISABLE_PLUGINS", "RESTOREKIT_STRICT_PLUGINS",
             "RESTOREKIT_TRACE_PLUGINS", "RESTOREKIT_EXT", "RESTOREKIT_CACHE",
             "RESTOREKIT_MALLOC", "RESTOREKIT_MAX_PIXELS"}
OTHER_COMMANDS = {"pip", "python", "pytest"}


def blocks(lang: str) -> list[str]:
    """The fenced blocks of the guide in language ``lang``, in order."""
    return [body for kind, body in FENCE.findall(DOC.read_text()) if kind == lang]


def tutorial_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for body in blocks("python") + blocks("toml"):
        m = FILE_MARK.match(body)
        if not m:
            continue
        path, continued = m.group(1), m.group(2)
        text = body[m.end():]
        if continued:
            assert path in files, f"{path}: '(continued)' block before its first block"
            files[path] += text
        else:
            assert path not in files, f"{path} appears twice without '(continued)'"
            files[path] = text
    return files


def pyproject_fields(text: str) -> tuple[str, str, dict[str, str]]:
    """Name, version and ``restorekit`` entry points of a pyproject (no tomllib on 3.10)."""
    name = re.search(r'^name = "([^"]+)"', text, re.M)
    version = re.search(r'^version = "([^"]+)"', text, re.M)
    section = re.search(r"^\[project\.entry-points\.restorekit\]\n(.*?)(?=^\[|\Z)", text,
                        re.M | re.S)
    assert name and version and section, "pyproject block lacks name, version or entry point"
    eps = dict(re.findall(r'^(\w+) = "([^"]+)"', section.group(1), re.M))
    return name.group(1), version.group(1), eps


def snippets() -> list[str]:
    return [b for b in blocks("python") if not FILE_MARK.match(b)]


def shell_commands() -> list[tuple[list[str], list[str]]]:
    """(argv, output lines) for every ``$ `` line of the console blocks."""
    found: list[tuple[list[str], list[str]]] = []
    for body in blocks("console"):
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append((shlex.split(line[2:].split("  #")[0]), []))
            elif line.strip() and found:
                found[-1][1].append(line.rstrip())
    return found


@pytest.fixture
def lumen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The tutorial plugin written from the guide and 'installed' through a dist-info."""
    root = tmp_path / "restorekit-lumen"
    for rel, text in tutorial_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    name, version, eps = pyproject_fields((root / "pyproject.toml").read_text())
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[restorekit]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    monkeypatch.chdir(tmp_path)
    plugins.reset()
    yield root
    for name in [m for m in sys.modules if m == "lumen_plugin" or m.startswith("lumen_plugin.")]:
        del sys.modules[name]


def test_the_guide_has_the_tutorial_files() -> None:
    files = tutorial_files()
    assert {"pyproject.toml", "lumen_plugin/__init__.py", "lumen_plugin/model.py",
            "tests/test_lumen.py"} <= set(files)
    assert 'lumen = "lumen_plugin"' in files["pyproject.toml"]
    assert "[project.entry-points.restorekit]" in files["pyproject.toml"]


def test_tutorial_plugin_is_listed_as_the_guide_shows(
        lumen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    shown = [o for argv, outs in shell_commands() if argv == ["restorekit", "plugins"]
             for o in outs if o != "..."]
    assert shown, "the guide shows no output of 'restorekit plugins'"
    for line in shown:
        assert line in out, f"the guide shows {line!r}, restorekit prints:\n" + "\n".join(out)
    reg = plugins.get_registry()
    assert reg.plugins["lumen"].error is None
    assert reg.plugins["lumen"].hooks == ["register_commands", "register_metrics",
                                          "register_models", "register_preprocessors"]


def test_tutorial_model_trains_and_evaluates_through_the_cli(
        lumen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.cli import main

    runs = str(lumen.parent / "runs")
    assert main(["run", "lumen", "--train", "--max-steps", "2", "--runs-dir", runs]) == 0
    capsys.readouterr()
    assert main(["run", "lumen", "--eval", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "identity" in out and "lumen" in out


def test_tutorial_tests_pass(lumen: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(lumen), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(lumen / "tests")], cwd=lumen, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs(index: int, lumen: Path) -> None:
    code = snippets()[index]
    # dont_inherit: a snippet runs as a reader's script would, without this file's
    # ``from __future__ import annotations`` (which breaks a snippet's dataclasses).
    exec(compile(code, f"docs/plugins.md python snippet {index + 1}", "exec",
                 dont_inherit=True), {"__name__": f"docs_snippet_{index}"})


def test_shell_commands_name_real_subcommands_and_options(lumen: Path) -> None:
    from restorekit.cli import build_parser
    from restorekit.cli.run import model_parser

    commands = shell_commands()
    assert any(argv[:1] == ["restorekit"] for argv, _ in commands)
    for argv, _ in commands:
        while argv and re.match(r"^[A-Z_]+=", argv[0]):
            var = argv.pop(0).split("=", 1)[0]
            assert var in KNOWN_ENV, f"the guide uses an unknown variable {var}"
        tool = Path(argv[0]).name
        if tool != "restorekit":
            assert tool in OTHER_COMMANDS, f"unexpected command in the guide: {argv}"
            continue
        registry = plugins.get_registry()
        args = build_parser(registry).parse_args(argv[1:])
        if args.command == "run":
            parser = model_parser(registry.model(args.model))
            if args.rest != ["--help"]:
                parser.parse_args(args.rest)


def test_environment_variables_in_the_guide_are_real() -> None:
    text = DOC.read_text()
    used = set(re.findall(r"RESTOREKIT_[A-Z_]+", text)) - {"RESTOREKIT_API"}
    assert used <= KNOWN_ENV
    from restorekit.engine import allocator

    assert allocator.ENV == "RESTOREKIT_MALLOC"
    source = (Path(plugins.__file__)).read_text()
    for var in ("RESTOREKIT_DISABLE_PLUGINS", "RESTOREKIT_STRICT_PLUGINS",
                "RESTOREKIT_TRACE_PLUGINS"):
        assert var in text and var in source


def test_readme_quick_start_is_two_commands() -> None:
    quick = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [body for kind, body in FENCE.findall(quick) if kind == "bash"]
    assert block.splitlines() == [
        'pip install "torch==2.13.0" -e ".[dev]" && restorekit run pix2pixhd --train', "pytest"]


def test_readme_links_reach_files_and_headings() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", text)
    assert ("docs/benchmarks.md", "precision") in links
    for target, anchor in links:
        path = README.parent / target
        assert path.exists(), f"README links to a missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to a missing heading {target}#{anchor}"
