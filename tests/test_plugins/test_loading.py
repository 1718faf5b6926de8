"""The plugin system: discovery, isolation of broken plugins, conflicts, test registration."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from restorekit import API_VERSION, Metric, Model, Preprocessor, hookimpl, plugins
from restorekit.errors import PluginError


def make_dist(root: Path, dist: str, entry_name: str, module: str, source: str,
              version: str = "1.0") -> None:
    """A fake installed distribution on sys.path with one ``restorekit`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[restorekit]\n{entry_name} = {module}\n")


GOOD_PLUGIN = """
    import numpy as np
    from restorekit import hookimpl, Preprocessor

    @hookimpl
    def register_preprocessors(register):
        register(Preprocessor("invert", lambda image: 1.0 - image, description="1 - x"))
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtins_register_through_the_hooks() -> None:
    reg = plugins.get_registry()
    assert {"gamma", "autogamma", "clahe", "denoise"} <= set(reg.items["preprocessors"])
    assert {"psnr", "ssim", "ciede2000", "mae"} <= set(reg.items["metrics"])
    assert "classic" in reg.items["models"]
    assert reg.owners["models"]["classic"] == "restorekit.builtin.models"
    assert reg.plugins["restorekit.builtin.models"].source == "built-in"


def test_pix2pixhd_is_found_through_the_entry_point_group() -> None:
    reg = plugins.get_registry()
    assert reg.owners["models"]["pix2pixhd"] == "pix2pixhd"
    assert reg.plugins["pix2pixhd"].source == "restorekit"


def test_entry_point_plugin_is_loaded_with_its_distribution(site: Path) -> None:
    make_dist(site, "restorekit-invert", "invert", "rk_invert", GOOD_PLUGIN, "2.5")
    reg = plugins.get_registry()
    info = reg.plugins["invert"]
    assert (info.source, info.version, info.error) == ("restorekit-invert", "2.5", None)
    assert info.registered["preprocessors"] == ["invert"]
    image = np.full((2, 2, 3), 0.25, np.float32)
    np.testing.assert_allclose(reg.preprocessor("invert").fn(image), 0.75)


def test_plugin_that_fails_to_import_is_reported_and_skipped(
        site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "broken", "broken", "rk_broken", "raise RuntimeError('boom at import')")
    make_dist(site, "restorekit-invert", "invert", "rk_invert", GOOD_PLUGIN)
    reg = plugins.get_registry()
    assert "boom at import" in reg.plugins["broken"].error
    assert "invert" in reg.items["preprocessors"]  # the others keep working
    assert "classic" in reg.items["models"]
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "boom at import" in err


def test_plugin_raising_inside_a_hook_is_skipped(site: Path) -> None:
    make_dist(site, "bad-hook", "badhook", "rk_badhook", """
        from restorekit import hookimpl
        @hookimpl
        def register_metrics(register):
            raise ValueError("cannot register")
    """)
    reg = plugins.get_registry()
    assert "register_metrics raised ValueError: cannot register" in reg.plugins["badhook"].error
    assert "psnr" in reg.items["metrics"]


def test_strict_mode_turns_a_failure_into_an_error(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(site, "broken", "broken", "rk_broken", "raise ImportError('missing dep')")
    monkeypatch.setenv("RESTOREKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'broken'.*missing dep"):
        plugins.get_registry()


def test_disable_keeps_an_entry_point_out(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(site, "restorekit-invert", "invert", "rk_invert", GOOD_PLUGIN)
    monkeypatch.setenv("RESTOREKIT_DISABLE_PLUGINS", "invert, pix2pixhd")
    reg = plugins.get_registry()
    assert "invert" not in reg.plugins and "invert" not in reg.items["preprocessors"]
    assert "pix2pixhd" not in reg.items["models"]


def test_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def register_preprocessor(self, register):  # missing the final "s"
            pass

    pm = plugins.get_plugin_manager()
    pm.register(Typo(), name="typo")
    assert "unknown hook 'register_preprocessor'" in pm.infos["typo"].error


def test_hook_with_wrong_arguments_fails_loudly() -> None:
    class WrongArgs:
        @hookimpl
        def register_metrics(self, register, extra):
            pass

    pm = plugins.get_plugin_manager()
    pm.register(WrongArgs(), name="wrongargs")
    assert "extra" in pm.infos["wrongargs"].error
    assert "psnr" in pm.registry.items["metrics"]


def test_incompatible_api_version_is_a_load_failure(site: Path) -> None:
    source = f"RESTOREKIT_API = {API_VERSION + 1}\n" + textwrap.dedent(GOOD_PLUGIN)
    make_dist(site, "future", "future", "rk_future", source)
    reg = plugins.get_registry()
    assert f"needs restorekit plugin API {API_VERSION + 1}" in reg.plugins["future"].error
    assert "invert" not in reg.items["preprocessors"]


def test_duplicate_names_are_an_error_naming_both_plugins() -> None:
    class Clash:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("gamma", lambda image: image))

    with plugins.registered(Clash(), name="clash"):
        reg = plugins.get_registry()
        with pytest.raises(PluginError, match="'builtin' and 'clash': name one of "
                                              "builtin:gamma, clash:gamma"):
            reg.preprocessor("gamma")


def test_registered_plugin_does_not_leak() -> None:
    class Extra:
        @hookimpl
        def register_metrics(self, register):
            register(Metric("zero", lambda a, b: 0.0, higher_is_better=False))

    with plugins.registered(Extra(), name="extra"):
        assert "zero" in plugins.get_registry().items["metrics"]
    assert "zero" not in plugins.get_registry().items["metrics"]
    assert "extra" not in plugins.get_registry().plugins


def test_register_validates_items() -> None:
    class NotAModel:
        @hookimpl
        def register_models(self, register):
            register(object())

    with plugins.registered(NotAModel(), name="notamodel"):
        reg = plugins.get_registry()
        assert "expects a Model subclass" in reg.plugins["notamodel"].error


def test_model_options_come_from_presets_and_overrides() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Opts:
        width: int = 8
        depth: int = 2

    class Tiny(Model):
        name = "tiny"
        Options = Opts
        presets = {"big": {"width": 64}}

    assert Tiny.make_options("big", depth=5) == Opts(64, 5)
    with pytest.raises(Exception, match="no preset 'huge'"):
        Tiny.make_options("huge")
    with pytest.raises(Exception, match="no option"):
        Tiny.make_options(None, colour=1)


def test_a_failing_hook_registers_nothing_of_its_plugin() -> None:
    class Half:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("halfway", lambda image: image))

        @hookimpl
        def register_metrics(self, register):
            raise RuntimeError("metrics broke")

    with plugins.registered(Half(), name="half"):
        reg = plugins.get_registry()
        assert "metrics broke" in reg.plugins["half"].error
        assert "halfway" not in reg.items["preprocessors"]


def test_trace_logs_loads_and_hook_calls(site: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    make_dist(site, "restorekit-invert", "invert", "rk_invert", GOOD_PLUGIN)
    monkeypatch.setenv("RESTOREKIT_TRACE_PLUGINS", "1")
    plugins.get_registry()
    err = capsys.readouterr().err
    assert "[restorekit] loading entry point invert = rk_invert" in err
    assert "[restorekit] invert: register_preprocessors -> invert" in err
    assert "[restorekit] restorekit.builtin.metrics: register_metrics -> psnr" in err


def test_registering_an_already_loaded_plugin_is_harmless() -> None:
    import restorekit_pix2pixhd

    with plugins.registered(restorekit_pix2pixhd) as name:
        assert name == "pix2pixhd"
    reg = plugins.get_registry()
    assert reg.plugins["pix2pixhd"].error is None and "pix2pixhd" in reg.items["models"]
