"""Qualified names (issue 23, problem 3): a plugin's item that clashes with a built-in, or
with another plugin's, stays usable as PLUGIN:NAME; single items can be disabled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from restorekit import Command, Metric, Preprocessor, hookimpl, plugins, testing
from restorekit.cli import main
from restorekit.data import read_image, write_image
from restorekit.errors import PluginError
from restorekit.pipeline import Pipeline

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
README = DOCS.parents[1] / "README.md"


class NightOwl:
    """A plugin whose 'mae' and 'gamma' clash with the built-ins."""

    @hookimpl
    def register_metrics(self, register):
        register(Metric("mae", lambda p, t: 42.0, higher_is_better=False,
                        description="not the built-in mae"))

    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("gamma", lambda image, gamma=1.0: image * 0 + 0.125 * gamma,
                              params={"gamma": 1.0}))

    @hookimpl
    def register_commands(self, register):
        register(Command("hello", "say hello", lambda p: None,
                         lambda args, registry: print("hello from nightowl")))


class Other:
    @hookimpl
    def register_commands(self, register):
        register(Command("hello", "say hello", lambda p: None,
                         lambda args, registry: print("hello from other")))


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    write_image(tmp_path / "pred" / "a.png", np.full((8, 8, 3), 0.5, np.float32))
    write_image(tmp_path / "gt" / "a.png", np.full((8, 8, 3), 0.25, np.float32))
    return tmp_path / "pred", tmp_path / "gt"


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_a_bare_name_two_plugins_register_is_an_error_listing_the_qualified_names(
        images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = images
    with testing.isolated(nightowl=NightOwl()):
        assert main(["metrics", str(pred), str(gt), "--metrics", "mae"]) == 2
        assert last_line(capsys.readouterr().err) == (
            "restorekit: error: --metrics: metric 'mae' is registered by plugins 'builtin' "
            "and 'nightowl': name one of builtin:mae, nightowl:mae")


def test_both_clashing_metrics_are_usable_by_their_qualified_names(
        images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = images
    with testing.isolated(nightowl=NightOwl()):
        assert main(["metrics", str(pred), str(gt), "--metrics",
                     "builtin:mae,nightowl:mae,builtin:psnr", "--json"]) == 0
    mean = json.loads(capsys.readouterr().out)["mean"]
    assert mean["nightowl:mae"] == 42.0
    assert mean["builtin:mae"] == pytest.approx(0.25, abs=0.002)
    assert mean["psnr"] == pytest.approx(12.04, abs=0.05)  # unique: its bare name


def test_clashing_preprocessors_in_a_pipeline_and_its_spec_round_trip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.full((4, 4, 3), 0.25, np.float32)
    with testing.isolated(nightowl=NightOwl()) as registry:
        mine = Pipeline.parse("nightowl:gamma:gamma=2,builtin:autogamma", registry)
        assert str(mine) == "nightowl:gamma:gamma=2.0,autogamma"
        assert str(Pipeline.parse(str(mine), registry)) == str(mine)
        np.testing.assert_allclose(Pipeline.parse("nightowl:gamma:gamma=2", registry)(image),
                                   0.25)
        builtin = Pipeline.parse("builtin:gamma:gamma=2", registry)
        np.testing.assert_allclose(builtin(image), 0.5, atol=1e-6)

        write_image(tmp_path / "in.png", image)
        assert main(["preprocess", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                     "--preprocess", "nightowl:gamma:gamma=4"]) == 0
        assert read_image(tmp_path / "out" / "in.png").mean() == pytest.approx(0.5, abs=0.01)

        assert main(["preprocess", str(tmp_path / "in.png"), "-o", str(tmp_path / "o2"),
                     "--preprocess", "gamma:gamma=2"]) == 2
        assert last_line(capsys.readouterr().err) == (
            "restorekit: error: --preprocess: preprocessor 'gamma' is registered by plugins "
            "'builtin' and 'nightowl': name one of builtin:gamma, nightowl:gamma")


def test_a_missing_equals_sign_still_reads_as_a_parameter_mistake(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_image(tmp_path / "in.png", np.full((4, 4, 3), 0.25, np.float32))
    assert main(["preprocess", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                 "--preprocess", "clahe:clip"]) == 2
    assert last_line(capsys.readouterr().err) == (
        "restorekit: error: --preprocess: clahe: expected key=value, got 'clip'")


def test_models_and_commands_by_qualified_name(capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl(), other=Other()) as registry:
        assert registry.model("builtin:classic") is registry.model("classic")
        assert main(["nightowl:hello"]) == 0
        assert capsys.readouterr().out == "hello from nightowl\n"
        assert main(["other:hello"]) == 0
        assert capsys.readouterr().out == "hello from other\n"
        with pytest.raises(PluginError, match="unknown model 'nightowl:classic'"):
            registry.model("nightowl:classic")


def test_a_builtin_item_can_be_disabled_so_the_plugin_keeps_the_bare_name(
        images: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = images
    monkeypatch.setenv("RESTOREKIT_DISABLE_PLUGINS", "builtin:mae")
    with testing.isolated(nightowl=NightOwl()) as registry:
        assert registry.metric("mae").plugin == "nightowl"
        assert "builtin:mae" not in registry.qualified["metrics"]
        assert main(["metrics", str(pred), str(gt), "--metrics", "mae", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["mean"] == {"mae": 42.0}
        assert main(["plugins"]) == 0
        out, err = capsys.readouterr()
        assert "    disabled: metric mae (RESTOREKIT_DISABLE_PLUGINS)" in out
        assert "metrics 'mae'" not in out and "'mae'" not in err


def test_disabling_names_that_match_nothing_warns(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RESTOREKIT_DISABLE_PLUGINS", "builtin,builtin:mea,nightowl:gamma")
    plugins.reset()
    registry = plugins.get_registry()
    assert "psnr" in registry.items["metrics"]  # 'builtin' as a whole stays
    err = capsys.readouterr().err
    assert ("restorekit: warning: RESTOREKIT_DISABLE_PLUGINS: the plugin 'builtin' cannot be "
            "disabled as a whole; name single items instead (e.g. builtin:mae)") in err
    assert ("restorekit: warning: RESTOREKIT_DISABLE_PLUGINS names no registered item: "
            "builtin:mea, nightowl:gamma") in err


def test_a_plugin_cannot_take_the_name_builtin() -> None:
    with testing.isolated(builtin=NightOwl()) as registry:
        assert registry.plugins["builtin"].error == (
            "the plugin name 'builtin' is reserved or contains ':' or ','; rename the entry "
            "point")
        assert registry.metric("mae").plugin == "builtin"


def test_the_listing_names_the_builtins_builtin_and_gives_the_way_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    with testing.isolated(nightowl=NightOwl()):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("builtin  ") and out[0].endswith("  (built-in)  ok, with name "
                                                              "conflicts")
    assert "    conflict: metrics 'mae' also registered by 'nightowl'; use the qualified " \
           "names (builtin:NAME)" in out
    assert "    conflict: metrics 'mae' also registered by 'builtin'; use the qualified " \
           "names (nightowl:NAME)" in out


def test_every_builtin_item_is_documented_and_in_the_help(
        capsys: pytest.CaptureFixture[str]) -> None:
    registry = plugins.get_registry()
    docs, readme = DOCS.read_text(), README.read_text()
    for kind in ("preprocessors", "metrics", "models"):
        for qualified in registry.qualified[kind]:
            plugin, _, name = qualified.partition(":")
            if plugin == "builtin":
                assert f"`{name}`" in docs, f"docs/plugins.md does not list {kind} {name}"
                assert f"`{name}`" in readme, f"README.md does not list {kind} {name}"
    with pytest.raises(SystemExit):
        main(["metrics", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("psnr", "ssim", "psnr_gtmean", "ciede2000", "mae", "loe", "brightness",
                 "noise_sigma", "colourfulness"):
        assert name in text
    assert "restorekit plugins --details NAME" in text


def test_the_hookimpl_of_the_readme_is_in_restorekit_api() -> None:
    import restorekit
    from restorekit.api import hookimpl as from_api

    assert from_api is restorekit.hookimpl

    class Plugin:
        @from_api
        def register_metrics(self, register):
            register(Metric("via_api", lambda p, t: 0.0, higher_is_better=True))

    with testing.isolated(viaapi=Plugin()) as registry:
        assert registry.metric("via_api").plugin == "viaapi"


def test_help_of_restorekit_api_is_about_restorekit() -> None:
    import pydoc

    import restorekit.api

    text = pydoc.render_doc(restorekit.api, renderer=pydoc.plaintext)
    assert "class ndarray" not in text and len(text.splitlines()) < 1000
    assert "class Preprocessor" in text and "hookimpl" in text
