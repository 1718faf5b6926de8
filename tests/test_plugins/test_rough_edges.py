"""The plugin author's rough edges (issue 10): each one reproduced, each message checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit import Metric, Preprocessor, TrainableModel, hookimpl, plugins, testing
from restorekit.cli import main
from restorekit.engine import TrainConfig
from restorekit.errors import PluginError


def make_dist(root: Path, entry_name: str, module: str, source: str) -> None:
    """A fake installed distribution ``restorekit-<entry_name>`` with one entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"restorekit_{entry_name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: restorekit-{entry_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[restorekit]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class HalfOptions(TrainConfig):
    width: int = 4


class Half(TrainableModel):
    """Implements everything but train_step and enhance_tensor."""

    name = "half"
    Options = HalfOptions

    def build(self, device: torch.device) -> None:
        self.net = torch.nn.Conv2d(3, 3, 1)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}


class HalfPlugin:
    @hookimpl
    def register_models(self, register):
        register(Half)


# -- the model contract is checked at load -----------------------------------------------------
def test_model_missing_methods_is_a_load_failure_naming_plugin_class_and_method(
        capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(halfplugin=HalfPlugin()) as registry:
        info = registry.plugins["halfplugin"]
        assert info.error == ("model class Half ('half') does not implement train_step, "
                              "enhance_tensor (required of a TrainableModel)")
        assert "half" not in registry.items["models"]
        err = capsys.readouterr().err
        assert "plugin 'halfplugin'" in err and "train_step" in err
        assert main(["plugins"]) == 0
        assert "halfplugin  -  (registered at run time)  FAILED: model class Half" in \
            capsys.readouterr().out


def test_model_contract_in_strict_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'halfplugin'.*Half.*train_step"), \
            testing.isolated(halfplugin=HalfPlugin()):
        pass


# -- hooks without @hookimpl -------------------------------------------------------------------
def test_plugin_without_hookimpl_warns(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "bare", "bare_plugin", """
        from restorekit import Preprocessor

        def register_preprocessors(register):  # the decorator is missing
            register(Preprocessor("bare", lambda image: image))
    """)
    assert main(["plugins"]) == 0
    err = capsys.readouterr().err
    assert "restorekit: warning: plugin 'bare' implements no hooks" in err
    assert "@restorekit.hookimpl" in err


def test_plugin_without_hookimpl_fails_in_strict_mode(site: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "bare", "bare_plugin", "def register_models(register):\n    pass\n")
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    assert main(["plugins"]) == 1
    assert "implements no hooks" in capsys.readouterr().err


# -- import errors: file and line; traceback when tracing or strict ----------------------------
BROKEN = """
    import numpy as np

    x = np.definitely_not_there
"""


def test_import_error_names_file_and_line(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "broken_plugin", BROKEN)
    assert main(["plugins"]) == 0
    err = capsys.readouterr().err
    line = next(e for e in err.splitlines() if "broken" in e)
    assert "failed to import 'broken_plugin': AttributeError" in line
    assert f"(at {site / 'broken_plugin.py'}:4)" in line
    assert "Traceback" not in err


@pytest.mark.parametrize("var", ["RESTOREKIT_TRACE_PLUGINS", "RESTOREKIT_STRICT_PLUGINS"])
def test_import_error_traceback_when_tracing_or_strict(
        var: str, site: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "broken_plugin", BROKEN)
    monkeypatch.setenv(var, "1")
    main(["plugins"])
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "broken_plugin.py" in err


# -- a crash inside a preprocessor or a metric names the plugin ----------------------------------
class Crashy:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("crash", lambda image: image["nope"]))

    @hookimpl
    def register_metrics(self, register):
        register(Metric("crashmetric", lambda a, b: 1 / 0, higher_is_better=True))


def _images(tmp_path: Path) -> tuple[Path, Path]:
    from restorekit.data import write_image

    for name in ("pred", "gt"):
        write_image(tmp_path / name / "a.png", np.full((8, 8, 3), 0.5, np.float32))
    return tmp_path / "pred", tmp_path / "gt"


def test_crash_in_a_plugin_preprocessor_is_one_line_naming_the_plugin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, _ = _images(tmp_path)
    with testing.isolated(crashy=Crashy()):
        code = main(["preprocess", str(pred), "-o", str(tmp_path / "o"), "--preprocess", "crash"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert code == 1
    assert last.startswith("restorekit: error: preprocessor 'crash' of plugin 'crashy' raised "
                           "IndexError: ")
    assert "Traceback" not in err


def test_crash_in_a_plugin_metric_is_one_line_and_traced_on_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _images(tmp_path)
    with testing.isolated(crashy=Crashy()):
        assert main(["metrics", str(pred), str(gt), "--metrics", "psnr,crashmetric"]) == 1
        err = capsys.readouterr().err
        assert "metric 'crashmetric' of plugin 'crashy' raised ZeroDivisionError" in err
        assert err.count("\n") == 1
        monkeypatch.setenv("RESTOREKIT_TRACE_PLUGINS", "1")
        assert main(["metrics", str(pred), str(gt), "--metrics", "crashmetric"]) == 1
        assert "Traceback (most recent call last)" in capsys.readouterr().err


# -- a wrong hook parameter name ------------------------------------------------------------------
def test_wrong_hook_parameter_is_a_load_failure_not_pluggy_raw(
        capsys: pytest.CaptureFixture[str]) -> None:
    class WrongName:
        @hookimpl
        def register_metrics(self, reg):
            pass

    with testing.isolated(wrongname=WrongName()) as registry:
        error = registry.plugins["wrongname"].error
    assert error == ("hook register_metrics: parameter(s) 'reg' are not hook arguments "
                     "(it takes: register)")
    assert "PluginValidationError" not in capsys.readouterr().err


# -- conflicts are shown ------------------------------------------------------------------------
class First:
    @hookimpl
    def register_metrics(self, register):
        register(Metric("same", lambda a, b: 0.0, higher_is_better=True))


class Second:
    @hookimpl
    def register_metrics(self, register):
        register(Metric("same", lambda a, b: 1.0, higher_is_better=True))


def test_conflicts_are_shown_by_plugins_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(first=First(), second=Second()):
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert "first  -  (registered at run time)  ok, with name conflicts" in out
        assert "conflict: metrics 'same' also registered by 'second'" in out
        assert "conflict: metrics 'same' also registered by 'first'" in out
        assert main(["plugins", "--json"]) == 0
        infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
        assert infos["second"]["conflicts"] == ["metrics 'same' also registered by 'first'"]
        assert infos["second"]["registered"]["metrics"] == ["same"]


# -- testing.isolated, RESTOREKIT_DISABLE_PLUGINS='*' and unknown names -----------------------
def test_isolated_registry_ignores_installed_plugins(site: Path) -> None:
    make_dist(site, "other", "other_plugin", """
        from restorekit import Metric, hookimpl

        @hookimpl
        def register_metrics(register):
            register(Metric("same", lambda a, b: 0.0, higher_is_better=True))
    """)
    assert "other" in plugins.get_registry().plugins
    with testing.isolated(first=First()) as registry:
        assert "other" not in registry.plugins and "pix2pixhd" not in registry.plugins
        assert registry.metric("same").plugin == "first"
        assert plugins.get_registry() is registry
    assert "other" in plugins.get_registry().plugins  # the previous manager is back


def test_disable_star_and_unknown_names(site: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RESTOREKIT_DISABLE_PLUGINS", "*")
    registry = plugins.get_registry()
    assert [i.source for i in registry.plugins.values()] == \
        ["built-in"] * len(plugins.BUILTIN_MODULES)
    plugins.reset()
    monkeypatch.setenv("RESTOREKIT_DISABLE_PLUGINS", "pix2pixhd,pixtopix")
    registry = plugins.get_registry()
    assert "pix2pixhd" not in registry.plugins
    err = capsys.readouterr().err
    assert "RESTOREKIT_DISABLE_PLUGINS names no installed plugin: pixtopix" in err


def test_plugin_warnings_are_printed_once_per_process(
        site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "broken_plugin", BROKEN)
    for _ in range(3):
        assert main(["plugins"]) == 0
        pm = plugins.get_plugin_manager()
        pm.unregister("nothing")  # forces the registry to be rebuilt
    assert capsys.readouterr().err.count("plugin 'broken'") == 1


# -- a throw-away venv from a venv ----------------------------------------------------------------
def _index_reachable(folder: Path) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                           str(folder), "setuptools>=68"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


@pytest.mark.slow
def test_venv_recipe_of_the_guide_works_from_a_venv(tmp_path: Path) -> None:
    """`python -m restorekit.testing venv DIR` + `pip install -e .` of a generated plugin."""
    try:
        reachable = _index_reachable(tmp_path / "probe")
    except (OSError, subprocess.TimeoutExpired):
        reachable = False
    if not reachable:
        pytest.skip("no package index reachable: the recipe's editable install needs a "
                    "current setuptools from it")
    env = {**os.environ, "RESTOREKIT_EXT": "off", "PYTHONDONTWRITEBYTECODE": "1"}
    plugin = tmp_path / "restorekit-glow"
    assert main(["new-plugin", "restorekit-glow", "--kind", "metric", "-o", str(plugin)]) == 0
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "restorekit.testing", "venv", str(venv)], check=True,
                   timeout=300, env=env, capture_output=True)
    py = venv / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", "."],
                          cwd=plugin, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([str(py), "-m", "restorekit", "plugins"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "glow  0.1.0  (restorekit-glow)  ok" in proc.stdout
