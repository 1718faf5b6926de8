"""Engine options listed for every trainable model are applied by the engine to what the model
exposes, or said in one line: never a silent no-op (issue 23, problem 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from restorekit import StepContext, TrainableModel, hookimpl, testing
from restorekit.cli import main
from restorekit.data import write_image
from restorekit.engine import TrainConfig
from restorekit.engine.step import check_first_step, step_function


@dataclass
class LumenOptions(TrainConfig):
    width: int = field(default=4, metadata={"help": "channels", "range": (1, 64)})


class Lumen(TrainableModel):
    """The tutorial's model (docs/plugins.md), small."""

    name: ClassVar[str] = "lumen"
    Options: ClassVar[type] = LumenOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": dict(epochs=1, batch_size=2, crop_size=32, samples_per_epoch=4)}
    embedded_preset: ClassVar[str | None] = "quick"

    def build(self, device: torch.device) -> None:
        self.net = nn.Sequential(nn.Conv2d(3, self.options.width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(self.options.width, 3, 3, padding=1)).to(device)
        self.opt = self.make_optimizer(self.net.parameters())

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=1e-3)

    def networks(self) -> dict[str, nn.Module]:
        return {"gain": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"gain": self.opt}

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            loss = F.l1_loss(self.net(low), high)
        ctx.backward_step(loss, "gain")
        return {"l1": loss.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return self.net(low).float().clamp(0, 1)


class RMSLumen(Lumen):
    """Its optimiser has no fused kernel."""

    name: ClassVar[str] = "rmslumen"

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=1e-3)


class PlainLumen(Lumen):
    """Runs its forward pass outside ctx.autocast() and steps its optimiser itself."""

    name: ClassVar[str] = "plainlumen"

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = F.l1_loss(self.net(low), high)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"l1": loss.detach()}


class Plugin:
    @hookimpl
    def register_models(self, register: Any) -> None:
        for cls in (Lumen, RMSLumen, PlainLumen):
            register(cls)


def first_step(cls: type[Lumen], precision: str = "fp32", **options: Any) -> Lumen:
    model = cls(cls.make_options("quick", **options), lambda image: image)
    model.build(torch.device("cpu"))
    ctx = testing.step_context(model, precision)
    step_function(model, ctx)(*testing.tiny_batch(2, 32))
    check_first_step(model, ctx)
    return model


def warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("restorekit: warning:")]


def test_fused_optimizer_is_applied_to_the_optimisers_a_model_builds(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert first_step(Lumen).opt.param_groups[0]["fused"] is True
    assert not first_step(Lumen, fused_optimizer=False).opt.param_groups[0].get("fused")
    assert warnings(capsys) == []


def test_pix2pixhd_gets_the_options_without_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit_pix2pixhd.model import Pix2PixHD

    tiny = dict(ngf=4, ndf=4, n_blocks_global=1, n_layers_D=1, num_D=1, fused=False,
                crop_size=32)
    model = Pix2PixHD(Pix2PixHD.make_options("quick", **tiny), lambda image: image)
    model.build(torch.device("cpu"))
    ctx = testing.step_context(model, "bf16")
    step_function(model, ctx)(*testing.tiny_batch(2, 32))
    check_first_step(model, ctx)
    assert [opt.param_groups[0]["fused"] for opt in model.optimizers().values()] == [True] * 2
    assert (ctx.autocasts, ctx.updates) == (2, 2)
    assert warnings(capsys) == []


def test_fused_optimizer_names_an_optimiser_without_fused_kernels(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Was: --fused-optimizer silently left an RMSprop unfused."""
    first_step(RMSLumen)
    assert warnings(capsys) == [
        "restorekit: warning: --fused-optimizer: optimizer(s) gain (RMSprop) of model "
        "'rmslumen' have no fused kernel here; they run unfused"]
    first_step(RMSLumen, fused_optimizer=False)
    assert warnings(capsys) == []


def test_precision_of_a_step_outside_autocast_is_one_warning(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Was: --precision bf16 trained such a model in fp32 without a word."""
    first_step(Lumen, "bf16")
    assert warnings(capsys) == []
    first_step(PlainLumen, "fp32")
    assert warnings(capsys) == []
    first_step(PlainLumen, "bf16")
    assert warnings(capsys) == [
        "restorekit: warning: --precision bf16: model 'plainlumen' runs its training step "
        "outside ctx.autocast(), so it trains in fp32"]
    first_step(PlainLumen, "fp16")
    assert warnings(capsys)[1] == (
        "restorekit: warning: model 'plainlumen' steps its optimisers without "
        "ctx.backward_step(), so it runs without fp16 loss scaling")


def test_the_cli_says_it_once_and_other_models_options_are_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = str(tmp_path / "runs")
    pairs = testing.tiny_pairs(3)
    for i in range(len(pairs)):
        for folder, image in zip(("low", "high"), pairs.pair(i), strict=True):
            write_image(tmp_path / "data" / folder / f"{i}.png", image)
    with testing.isolated(options=Plugin()):
        assert main(["run", "plainlumen", "--train", "--max-steps", "2", "--precision", "bf16",
                     "--data", str(tmp_path / "data"), "--preset", "quick", "--num-samples",
                     "0", "--metrics", "mae", "--runs-dir", runs]) == 0
        err = capsys.readouterr().err
        assert err.count("runs its training step outside ctx.autocast()") == 1
        # --ema is Pix2PixHD's own option: for another model, one line naming both.
        assert main(["run", "lumen", "--train", "--ema", "0.99", "--runs-dir", runs]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["restorekit: error: restorekit run lumen: unrecognized arguments: "
                       "--ema 0.99"]
        assert main(["run", "lumen", "--train", "--cuda-graph", "--device", "cpu",
                     "--runs-dir", runs]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "restorekit: error: --cuda-graph: needs a CUDA device (training runs on cpu)"]
