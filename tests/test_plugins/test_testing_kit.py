"""restorekit.testing's kit for plugin authors: check_plugin finds each kind of broken item,
and passes on the built-ins and Pix2PixHD (issue 23, problem 5)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit import (
    Command,
    Metric,
    Model,
    NoReferenceMetric,
    Preprocessor,
    StepContext,
    TrainableModel,
    hookimpl,
    plugins,
    testing,
)
from restorekit.data import PairSet
from restorekit.engine import TrainConfig


@dataclass
class NetOptions(TrainConfig):
    width: int = field(default=4, metadata={"help": "channels", "range": (1, 64)})


class Net(TrainableModel):
    """A tutorial-like model that keeps every contract."""

    name: ClassVar[str] = "net"
    Options: ClassVar[type] = NetOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {"quick": dict(crop_size=48, batch_size=4)}
    embedded_preset: ClassVar[str | None] = "quick"

    def build(self, device: torch.device) -> None:
        self.net = nn.Conv2d(3, 3, 3, padding=1).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            loss = F.l1_loss(self.enhance_tensor(low), high)
        ctx.backward_step(loss, "net")
        return {"l1": loss.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return (low + self.net(low)).float().clamp(0, 1)


class NoAutocast(Net):
    name: ClassVar[str] = "noautocast"

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = F.l1_loss(self.enhance_tensor(low), high)
        ctx.backward_step(loss, "net")
        return {"l1": loss.detach()}


class NanLoss(Net):
    name: ClassVar[str] = "nanloss"

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        return {"l1": super().train_step(low, high, ctx)["l1"] * float("nan")}


class HalfSize(Model):
    name: ClassVar[str] = "halfsize"

    def enhance(self, image: np.ndarray) -> np.ndarray:
        return image[::2, ::2]


def lighten(image: np.ndarray, amount: float = 0.5) -> np.ndarray:
    return np.clip(image * (1 + amount), 0, 1).astype(np.float32)


def in_place(image: np.ndarray) -> np.ndarray:
    image *= 2
    return np.clip(image, 0, 1)


def crash(image: np.ndarray, radius: int = 3) -> np.ndarray:
    return image[radius]["x"]


BROKEN_PREPROCESSORS = {
    "half": (lambda image: image[::2, ::2],
             "preprocessor 'half' returned (12, 16, 3) for a (24, 32, 3) image"),
    "grey": (lambda image: image.mean(axis=2),
             "preprocessor 'grey' returned (24, 32) for a (24, 32, 3) image"),
    "bytes": (lambda image: (image * 255).astype(np.uint8),
              "preprocessor 'bytes' returned dtype uint8, not float32"),
    "nan": (lambda image: np.where(image > 0.2, np.nan, image).astype(np.float32),
            "preprocessor 'nan' returned"),
    "bright": (lambda image: image * 255,
               "preprocessor 'bright' returned values in ["),
    "none": (lambda image: None, "preprocessor 'none' returned NoneType, not a numpy array"),
    "inplace": (in_place, "preprocessor 'inplace' changed its input image in place"),
    "crash": (crash, "preprocessor 'crash' with its defaults {'radius': 3}: raised IndexError: "),
}
BROKEN_METRICS = {
    "array": (lambda p, t: np.abs(p - t).mean(axis=(0, 1)),
              "metric 'array' returned ndarray"),
    "nanm": (lambda p, t: float("nan"), "metric 'nanm' returned nan, not a finite number"),
    "text": (lambda p, t: "0.5", "metric 'text' returned str '0.5', not a number"),
}


class Broken:
    """One item of each kind with one mistake each, beside good ones."""

    @hookimpl
    def register_preprocessors(self, register: Any) -> None:
        register(Preprocessor("lighten", lighten, params={"amount": 0.5}))
        for name, (fn, _) in BROKEN_PREPROCESSORS.items():
            params = {"radius": 3} if name == "crash" else {}
            register(Preprocessor(name, fn, params=params))

    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register(Metric("absdiff", lambda p, t: float(np.abs(p - t).mean()), False))
        for name, (fn, _) in BROKEN_METRICS.items():
            register(Metric(name, fn, False))
        register(NoReferenceMetric("nrcrash", lambda p: 1 / 0, None))

    @hookimpl
    def register_models(self, register: Any) -> None:
        for cls in (Net, NoAutocast, NanLoss, HalfSize):
            register(cls)

    @hookimpl
    def register_commands(self, register: Any) -> None:
        def configure(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--x")
            parser.add_argument("--x")  # a clash argparse refuses

        register(Command("clash", "a broken command", configure, lambda args, reg: 0))


class Good:
    """The good items of Broken only."""

    @hookimpl
    def register_preprocessors(self, register: Any) -> None:
        register(Preprocessor("lighten", lighten, params={"amount": 0.5}))

    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register(Metric("absdiff", lambda p, t: float(np.abs(p - t).mean()), False))
        register(NoReferenceMetric("mean", lambda p: float(p.mean()), None))

    @hookimpl
    def register_models(self, register: Any) -> None:
        register(Net)

    @hookimpl
    def register_commands(self, register: Any) -> None:
        register(Command("hello", "say hello", lambda parser: None, lambda args, reg: 0))


def test_check_plugin_lists_every_broken_item_in_one_error() -> None:
    with pytest.raises(testing.PluginCheckError) as caught:
        testing.check_plugin(Broken(), "broken")
    problems = caught.value.problems
    message = str(caught.value)
    assert message.startswith(f"plugin 'broken': {len(problems)} problem(s):\n  - ")
    assert isinstance(caught.value, AssertionError)
    expected = [text for _, text in (*BROKEN_PREPROCESSORS.values(), *BROKEN_METRICS.values())]
    expected += [
        "metric 'nrcrash': raised ZeroDivisionError: division by zero",
        "model 'noautocast': train_step never enters ctx.autocast()",
        "model 'nanloss': train_step returned {'l1': tensor(nan)}",
        "model 'halfsize': enhance returned (12, 16, 3) for a (24, 32, 3) image",
        "command 'clash': configure(parser) raised ArgumentError",
    ]
    for text in expected:
        assert sum(p.startswith(text) for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems
    for good in ("lighten", "absdiff", "'net'"):
        assert good not in message


def test_check_plugin_passes_a_good_plugin_and_leaves_the_registry_alone() -> None:
    before = plugins.get_registry()
    testing.check_plugin(Good(), "good")
    assert plugins.get_registry() is before
    assert "good" not in before.plugins


def test_a_plugin_that_fails_to_load_or_registers_nothing() -> None:
    class Empty:
        pass

    class Typo:
        @hookimpl
        def register_metrics(self, register: Any) -> None:
            register(Metric("typo", lambda p, t: 0.0, higher_is_better=False, min_sise=1))

    with pytest.raises(testing.PluginCheckError, match="registers nothing"):
        testing.check_plugin(Empty(), "empty")
    with pytest.raises(testing.PluginCheckError, match=r"plugin 'typo': 1 problem\(s\):\n  - "
                                                       r"failed to load: .*min_sise"):
        testing.check_plugin(Typo(), "typo")


@pytest.mark.parametrize("module", plugins.BUILTIN_MODULES)
def test_the_built_ins_pass(module: str) -> None:
    testing.check_plugin(importlib.import_module(module))


def test_pix2pixhd_passes_with_tiny_options() -> None:
    import restorekit_pix2pixhd

    tiny = {"ngf": 4, "ndf": 4, "n_blocks_global": 1, "n_layers_D": 1, "num_D": 1,
            "fused": False}
    testing.check_plugin(restorekit_pix2pixhd, "pix2pixhd", options={"pix2pixhd": tiny})


def test_tiny_pairs_batch_and_step_context() -> None:
    pairs = testing.tiny_pairs(3, 16, seed=1)
    assert isinstance(pairs, PairSet) and len(pairs) == 3
    low, high = pairs.pair(0)
    assert low.shape == high.shape == (16, 16, 3) and low.dtype == np.float32
    assert low.min() >= 0 and high.max() <= 1 and low.mean() < high.mean() / 2
    np.testing.assert_array_equal(testing.tiny_pairs(3, 16, seed=1).pair(2)[1], pairs.pair(2)[1])
    low, high = testing.tiny_batch(2, 16)
    assert low.shape == high.shape == (2, 3, 16, 16)
    model = Net(Net.make_options(), lambda image: image)
    model.build(torch.device("cpu"))
    ctx = testing.step_context(model)
    losses = model.train_step(low, high, ctx)
    assert torch.isfinite(losses["l1"]) and (ctx.autocasts, ctx.updates) == (1, 1)
