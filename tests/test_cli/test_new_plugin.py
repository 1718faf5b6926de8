"""``restorekit new-plugin``: the generated packages install, list, lint and pass their tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restorekit import plugins
from restorekit.cli import main
from restorekit.cli.new_plugin import KINDS, create_plugin, plugin_name
from restorekit.data import write_image
from restorekit.errors import UsageError

NAMES = {"preprocessor": "brighten", "metric": "meanshift", "model": "tinynet",
         "command": "meanlight", "preprocessor,metric,model,command": "nightowl"}
ITEMS = {"preprocessor": "preprocessors", "metric": "metrics", "model": "models",
         "command": "commands"}
ALL = "preprocessor,metric,model,command"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plugin of each kind, and one (nightowl) with every kind at once."""
    root = tmp_path_factory.mktemp("scaffold")
    return {kind: create_plugin(NAMES[kind], kind, root / f"restorekit-{NAMES[kind]}")
            for kind in (*KINDS, ALL)}


def fake_install(folder: Path, site: Path) -> None:
    """A dist-info on ``site`` built from the generated pyproject, as pip would write it."""
    text = (folder / "pyproject.toml").read_text()
    dist = re.search(r'^name = "([^"]+)"', text, re.M).group(1)
    entry = re.search(r"^\[project\.entry-points\.restorekit\]\n(\w+) = \"([^\"]+)\"",
                      text, re.M)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[restorekit]\n{entry[1]} = {entry[2]}\n")


def test_files_of_a_generated_plugin(generated: dict[str, Path]) -> None:
    model = generated["model"]
    names = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
    assert names == [".gitignore", "README.md", "pyproject.toml", "tests/test_tinynet.py",
                     "tinynet_plugin/__init__.py", "tinynet_plugin/model.py"]
    pyproject = (model / "pyproject.toml").read_text()
    assert '[project.entry-points.restorekit]\ntinynet = "tinynet_plugin"' in pyproject
    assert 'name = "restorekit-tinynet"' in pyproject
    assert "testing.isolated(" in (model / "tests" / "test_tinynet.py").read_text()


def test_generated_plugins_are_listed_by_restorekit_plugins(
        generated: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for folder in generated.values():
        fake_install(folder, tmp_path)
        monkeypatch.syspath_prepend(str(folder))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kinds, name in NAMES.items():
        assert f"{name}  0.1.0  (restorekit-{name})  ok" in out
        for kind in kinds.split(","):
            assert f"    {ITEMS[kind]}: {name}" in out
    reg = plugins.get_registry()
    assert not reg.failures
    for name in NAMES.values():
        sys.modules.pop(f"{name}_plugin", None)
        sys.modules.pop(f"{name}_plugin.model", None)


def test_generated_tests_pass(generated: dict[str, Path]) -> None:
    """The plugin with every kind: its tests (each item's own, and testing.check_plugin on
    all of them) pass as generated."""
    folder = generated[ALL]
    env = {**os.environ, "RESTOREKIT_EXT": "off",
           "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(folder / "tests")], capture_output=True, text=True, timeout=300,
                          env=env, cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout
    tests = (folder / "tests" / "test_nightowl.py").read_text()
    assert "testing.check_plugin(nightowl_plugin" in tests
    assert "testing.step_context(model)" in tests and "class Ctx" not in tests


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("kind", [*KINDS, ALL])
def test_generated_files_are_ruff_clean(generated: dict[str, Path], kind: str) -> None:
    """Under the generated project's own ruff settings, from its folder and from above it
    (issue 23: the scaffold's imports failed I001 there)."""
    for cwd, target in ((generated[kind], "."), (generated[kind].parent, generated[kind].name)):
        proc = subprocess.run(["ruff", "check", "--no-cache", target], cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_several_kinds_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--kind takes a comma-separated list and may be repeated; a command kind."""
    folder = tmp_path / "owl"
    assert main(["new-plugin", "nightowl", "--kind", "preprocessor,command", "--kind", "model",
                 "--kind", "command", "-o", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "created the plugin 'nightowl' (restorekit-nightowl) with the preprocessor, model " \
        "and command in" in out
    init = (folder / "nightowl_plugin" / "__init__.py").read_text()
    hooks = re.findall(r"^def (register_\w+)", init, re.M)
    assert hooks == ["register_preprocessors", "register_models", "register_commands"]
    assert (folder / "nightowl_plugin" / "model.py").exists()
    assert "--kind preprocessor,model,command" in (folder / "README.md").read_text()
    assert main(["new-plugin", "x", "--kind", "model,sampler", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        "restorekit: error: new-plugin: --kind must be one or more of preprocessor, metric, "
        "model, command (got 'sampler')")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["", "1abc", "My-Plugin", "has space", "class", "Upper",
                                  "restorekit", "restorekit-restorekit_x", "a.b"])
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid name"):
        create_plugin(name, "metric", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_kind_and_non_empty_target_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--kind"):
        create_plugin("ok", "sampler", tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        create_plugin("ok", "metric", tmp_path / "b")
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"
    (tmp_path / "c").mkdir()  # an existing empty folder is fine
    assert create_plugin("ok", "metric", tmp_path / "c") == tmp_path / "c"


@pytest.mark.parametrize(("given", "derived"), [("sharpen", "sharpen"),
                                                ("restorekit-sharpen", "sharpen"),
                                                ("restorekit_dark_prior", "dark_prior"),
                                                ("dark-prior", "dark_prior")])
def test_distribution_style_names_are_accepted(given: str, derived: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: `new-plugin restorekit-foo` was refused; the module name is derived."""
    assert plugin_name(given) == derived
    assert main(["new-plugin", given, "--kind", "metric", "-o", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / f"{derived}_plugin" / "__init__.py").exists()
    pyproject = (tmp_path / "p" / "pyproject.toml").read_text()
    assert f'name = "restorekit-{derived.replace("_", "-")}"' in pyproject
    assert f'{derived} = "{derived}_plugin"' in pyproject
    assert "pip install -e" in capsys.readouterr().out


def test_cli_new_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """new-plugin is a built-in command registered through register_commands."""
    out = tmp_path / "restorekit-sharpen"
    assert main(["new-plugin", "sharpen", "-o", str(out)]) == 0
    assert (out / "sharpen_plugin" / "__init__.py").exists()
    assert main(["new-plugin", "sharpen", "-o", str(out)]) == 2  # not empty any more
    assert main(["new-plugin", "Bad-Name"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "invalid name 'Bad-Name'" in err


def test_no_reference_metric_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--kind metric --no-reference: a NoReferenceMetric that lints, passes its own test
    and scores a folder without ground truth."""
    folder = tmp_path / "restorekit-clipped"
    assert main(["new-plugin", "clipped", "--kind", "metric", "--no-reference", "-o",
                 str(folder)]) == 0
    assert "created the plugin 'clipped' (restorekit-clipped) with the no-reference metric" \
        in capsys.readouterr().out
    assert "NoReferenceMetric(" in (folder / "clipped_plugin" / "__init__.py").read_text()
    assert "--kind metric --no-reference" in (folder / "README.md").read_text()
    env = {**os.environ, "RESTOREKIT_EXT": "off",
           "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(folder / "tests")], capture_output=True, text=True, timeout=300,
                          env=env, cwd=folder)
    assert proc.returncode == 0 and "3 passed" in proc.stdout, proc.stdout + proc.stderr
    if shutil.which("ruff"):
        lint = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=folder,
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout
    sys.path.insert(0, str(folder))
    try:
        import clipped_plugin

        write_image(tmp_path / "imgs" / "a.png", np.full((8, 8, 3), 1.0, np.float32))
        with plugins.registered(clipped_plugin, "clipped"):
            assert main(["metrics", str(tmp_path / "imgs"), "--metrics", "clipped",
                         "--json"]) == 0
        assert '"clipped": 1.0' in capsys.readouterr().out
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("clipped_plugin", None)
    assert main(["new-plugin", "x", "--kind", "model", "--no-reference", "-o",
                 str(tmp_path / "x")]) == 2
    assert "--no-reference goes with --kind metric (got --kind model)" in \
        capsys.readouterr().err
