"""The search space: declared by plugins, narrowed or fixed by a --space file."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from restorekit import Choice, FloatRange, IntRange
from restorekit.errors import UsageError
from restorekit.pipeline import Pipeline
from restorekit.plugins import get_registry
from restorekit.tune.space import build_space, parse_range, sample_model, sample_pipeline
from restorekit_pix2pixhd.model import Pix2PixHD


def test_the_declared_space_comes_from_the_plugins() -> None:
    space = build_space(Pix2PixHD, "quick", get_registry())
    assert space.model == Pix2PixHD.search_space("quick")
    assert space.candidates["denoise"]["method"] == Choice("tv", "bilateral", "nlm")
    assert space.candidates["whitebalance"] == {}  # no parameters: a step without any
    assert space.pipeline is None and space.max_steps == 2


def test_a_space_file_narrows_and_fixes(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text("""
[model]
only = ["lr", "ngf", "upsample"]
lr = {low = 1e-4, high = 1e-3, log = true}
ngf = [16, 24]
upsample = "resize"
niter = 6
[preprocess]
max_steps = 1
candidates = ["autogamma", "denoise"]
denoise = {method = ["tv"], strength = {low = 0.5, high = 1.5}}
""")
    space = build_space(Pix2PixHD, "quick", get_registry(), path)
    assert space.model == {"lr": FloatRange(1e-4, 1e-3, log=True), "ngf": Choice(16, 24)}
    assert space.fixed == {"upsample": "resize", "niter": 6}
    assert set(space.candidates) == {"autogamma", "denoise"}
    assert space.candidates["denoise"] == {"method": Choice("tv"),
                                           "strength": FloatRange(0.5, 1.5)}
    json_path = tmp_path / "space.json"
    json_path.write_text(json.dumps({"preprocess": {"pipeline": "autogamma,denoise"}}))
    assert build_space(Pix2PixHD, "quick", get_registry(), json_path).pipeline == \
        "autogamma,denoise"


@pytest.mark.parametrize(("text", "message"), [
    ("[model]\nlearning_rate = 1.0", "'learning_rate' is neither an option"),
    ("[model]\nonly = ['momentum']", "only: 'momentum' is not in the space"),
    ("[model]\nlr = {low = 1, top = 2}", "lr: a range is"),
    ("[preprocess]\ncandidates = ['retinex']", "no preprocessor 'retinex'"),
    ("[preprocess]\ndenoise = {sigma = [1.0]}", "has no parameter 'sigma'"),
    ("[preprocess]\nmax_steps = -1", "max_steps: expected an integer >= 0"),
    ("[optimizer]\nlr = 1", "unknown table 'optimizer'"),
    ("[model\n", "not valid toml"),
])
def test_space_file_errors_name_the_file_and_key(tmp_path: Path, text: str,
                                                 message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="--space: .*bad.toml") as info:
        build_space(Pix2PixHD, "quick", get_registry(), path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_range() -> None:
    assert parse_range({"low": 2, "high": 8, "step": 2}, "x") == IntRange(2, 8, 2)
    assert parse_range({"low": 0.1, "high": 1}, "x") == FloatRange(0.1, 1.0)
    assert parse_range([True, False], "x") == Choice(True, False)
    assert parse_range(3, "x") is None


def test_sampled_pipelines_parse_and_use_the_declared_ranges() -> None:
    registry = get_registry()
    space = build_space(Pix2PixHD, "quick", registry)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(25):
        trial = study.ask()
        params = sample_model(trial, space)
        spec = sample_pipeline(trial, space)
        assert str(Pipeline.parse(spec, registry)) is not None
        options = Pix2PixHD.make_options(None, **Pix2PixHD.options_from_search(
            dict(Pix2PixHD.presets["quick"]), params))
        assert options.niter + options.niter_decay == 100
        assert 5e-5 <= options.lr <= 1e-3 and options.upsample in ("transpose", "resize",
                                                                    "bilinear")
        seen.update(step.split(":")[0] for step in spec.split(",") if step)
        study.tell(trial, 0.0)
    assert len(seen) >= 3


def test_a_plugin_preprocessor_declares_its_search_and_bad_declarations_fail() -> None:
    from restorekit import Preprocessor, hookimpl, plugins

    class Lift:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("lift", lambda image, amount=0.5: image, {"amount": 0.5},
                                  search={"amount": FloatRange(0.1, 0.9)}))

    class Bad:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("badlift", lambda image, amount=0.5: image,
                                  {"amount": 0.5}, search={"strength": FloatRange(0, 1)}))

    with plugins.registered(Lift(), name="lift"), plugins.registered(Bad(), name="bad"):
        registry = plugins.get_registry()
        space = build_space(Pix2PixHD, "quick", registry)
        assert space.candidates["lift"] == {"amount": FloatRange(0.1, 0.9)}
        assert "badlift" not in space.candidates
        assert "search names 'strength'" in registry.plugins["bad"].error
