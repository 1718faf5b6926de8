"""Discovery and load-time checks (issue 23, problems 4 and 5): `plugins --details` shows
what an item takes; mistakes a plugin author makes are reported when the plugin loads."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restorekit import (
    FloatRange,
    IntRange,
    Metric,
    Model,
    NoReferenceMetric,
    Preprocessor,
    hookimpl,
    plugins,
    testing,
)
from restorekit.cli import main
from restorekit.errors import PluginError

HERE = Path(__file__).resolve()


def msr(image: np.ndarray, sigma: float = 15.0, scales: int = 3) -> np.ndarray:
    """A stand-in for a multi-scale Retinex."""
    return image


MSR_LINE = msr.__code__.co_firstlineno


@dataclass
class OwlOptions:
    width: int = field(default=16, metadata={"range": (1, 256)})


class Owl(Model):
    name = "owl"
    description = "an owl's eyes"
    Options = OwlOptions
    presets = {"small": {"width": 8}, "large": {"width": 64}}
    default_preset = "small"

    def enhance(self, image: np.ndarray) -> np.ndarray:
        return image


class NightOwl:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("msr", msr, params={"sigma": 15.0, "scales": 3},
                              description="multi-scale Retinex",
                              ranges={"sigma": (0.0, 300.0, "(]"), "scales": (1, 8)},
                              search={"sigma": FloatRange(5.0, 80.0, log=True),
                                      "scales": IntRange(1, 5)}))

    @hookimpl
    def register_metrics(self, register):
        register(Metric("sharp", lambda p, t: 0.0, higher_is_better=True,
                        description="edge sharpness"))
        register(NoReferenceMetric("glow", lambda p: 0.0, higher_is_better=None,
                                   description="mean glow"))

    @hookimpl
    def register_models(self, register):
        register(Owl)


def details(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["plugins", "--details", *argv]) == 0
    return capsys.readouterr().out


# -- plugins --details ----------------------------------------------------------------------------
def test_details_of_a_preprocessor(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl()):
        assert details(capsys, "msr").splitlines() == [
            "preprocessor nightowl:msr",
            "    multi-scale Retinex",
            "    sigma: float = 15.0, range (0.0, 300.0], tune searches 5.0..80.0 (log)",
            "    scales: int = 3, range [1, 8], tune searches 1..5",
        ]


def test_details_of_metrics_and_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl()):
        out = details(capsys, "nightowl").splitlines()
    assert "metric nightowl:sharp  (full-reference, better: higher)" in out
    assert "metric nightowl:glow  (no-reference, better: none)" in out
    assert "model nightowl:owl" in out
    assert "    preset small (default): width=8" in out
    assert "    preset large: width=64" in out
    assert "    options: restorekit run owl --help" in out
    assert not any("builtin:" in line for line in out)  # only that plugin's items


def test_details_json(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl()):
        items = {i["qualified"]: i for i in json.loads(details(capsys, "--json"))}
    assert items["nightowl:msr"]["params"] == [
        {"name": "sigma", "type": "float", "default": 15.0, "range": "(0.0, 300.0]",
         "search": {"type": "FloatRange", "low": 5.0, "high": 80.0, "log": True}},
        {"name": "scales", "type": "int", "default": 3, "range": "[1, 8]",
         "search": {"type": "IntRange", "low": 1, "high": 5, "step": 1, "log": False}}]
    assert (items["nightowl:sharp"]["direction"], items["nightowl:sharp"]["reference"]) == \
        ("higher", "full-reference")
    assert (items["builtin:mae"]["direction"], items["builtin:mae"]["reference"]) == \
        ("lower", "full-reference")
    assert items["builtin:loe"]["needs_source"] is True
    assert items["nightowl:owl"]["presets"] == {"small": {"width": 8}, "large": {"width": 64}}
    assert items["builtin:clahe"]["params"][0]["name"] == "clip"
    assert items["builtin:run"]["kind"] == "command"


def test_details_of_an_unknown_name_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--details", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorekit: error: --details: no plugin or item named 'nosuch' "
                          "(plugins: builtin")
    assert err.count("\n") == 1


def test_preprocess_help_lists_preprocessors_and_points_to_details(
        capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl()), pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gamma, autogamma, clahe" in text and "msr" in text
    assert "restorekit plugins --details NAME" in text


# -- load-time checks ---------------------------------------------------------------------------
class Typo:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("msr", msr, params={"sigm": 15.0}))


class Undeclared:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("msr", lambda image, sigma: image))


def test_a_params_typo_is_a_load_failure_naming_plugin_item_and_function(
        capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(typo=Typo()) as registry:
        assert registry.plugins["typo"].error == (
            f"preprocessor 'msr': params names 'sigm', which msr() does not take (it takes: "
            f"sigma, scales) (at {HERE}:{MSR_LINE})")
        assert "msr" not in registry.items["preprocessors"]
    assert "restorekit: warning: plugin 'typo' (registered at run time) skipped: " \
           "preprocessor 'msr': params names 'sigm'" in capsys.readouterr().err


def test_a_parameter_without_default_is_a_load_failure() -> None:
    with testing.isolated(undeclared=Undeclared()) as registry:
        error = registry.plugins["undeclared"].error
    assert error.startswith("preprocessor 'msr': <lambda>() requires 'sigma', which params "
                            "does not declare (give each a default there) (at ")


class NoHooks:
    def register_metrics(self, register):  # @hookimpl forgotten
        register(Metric("lost", lambda p, t: 0.0, higher_is_better=True))


def test_a_plugin_without_hooks_is_listed_as_a_warning_not_ok(
        capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nohooks=NoHooks()):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "nohooks  -  (registered at run time)  WARNING: plugin 'nohooks' implements no " \
           "hooks (are its hook functions decorated with @restorekit.hookimpl?)" in out


def make_dist(root: Path, name: str, source: str) -> None:
    (root / f"{name}_plugin.py").write_text(textwrap.dedent(source))
    info = root / f"restorekit_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: restorekit-{name}\n"
                                   f"Version: 1.0\n")
    (info / "entry_points.txt").write_text(f"[restorekit]\n{name} = {name}_plugin\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_strict_mode_reports_every_broken_plugin(site: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "import no_such_module_anywhere\n")
    make_dist(site, "bare", "def register_models(register):\n    pass\n")
    make_dist(site, "typo", """
        from restorekit import Preprocessor, hookimpl

        @hookimpl
        def register_preprocessors(register):
            register(Preprocessor("x", lambda image, a=1: image, params={"b": 1}))
    """)
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    assert main(["plugins"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("restorekit: error: 3 plugin problems (RESTOREKIT_STRICT_PLUGINS=1): ")
    problems = last.split("=1): ", 1)[1].split("; ")  # in the order the entry points are found
    assert sorted(p.split(" (")[0] for p in problems) == [
        "plugin 'bare' implements no hooks", "plugin 'broken'", "plugin 'typo'"]
    assert "plugin 'broken' (restorekit-broken): failed to import 'broken_plugin': " \
           "ModuleNotFoundError" in last
    assert "plugin 'typo' (restorekit-typo): preprocessor 'x': params names 'b'" in last


def test_strict_mode_in_python_names_each_broken_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as exc, testing.isolated(typo=Typo(), nohooks=NoHooks()):
        pass
    assert "plugin 'typo' (registered at run time): preprocessor 'msr'" in str(exc.value)
    assert "plugin 'nohooks' implements no hooks" in str(exc.value)


class Crashy:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("crash", lambda image: image["nope"]))


def test_a_traced_crash_shows_the_plugins_frames_not_restorekits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.data import write_image

    write_image(tmp_path / "a.png", np.full((4, 4, 3), 0.5, np.float32))
    monkeypatch.setenv("RESTOREKIT_TRACE_PLUGINS", "1")
    with testing.isolated(crashy=Crashy()):
        assert main(["preprocess", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                     "--preprocess", "crash"]) == 1
    err = capsys.readouterr().err
    trace = err[err.index("Traceback (most recent call last):"):].splitlines()
    assert trace[1].startswith(f'  File "{HERE}", line ')
    assert "restorekit/api.py" not in err and "restorekit/pipeline.py" not in err


def test_a_traced_import_failure_starts_in_the_plugins_file(
        site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "\n\nraise RuntimeError('boom')\n")
    monkeypatch.setenv("RESTOREKIT_TRACE_PLUGINS", "1")
    plugins.get_registry()
    err = capsys.readouterr().err
    trace = err[err.index("Traceback (most recent call last):"):].splitlines()
    assert trace[1] == f'  File "{site / "broken_plugin.py"}", line 3, in <module>'
    assert "importlib" not in "\n".join(trace[:4])
