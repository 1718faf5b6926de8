"""Training precision: fp32, bf16 and fp16 autocast, for the fused and the plain Pix2PixHD.

The bug class seen on the first GPU run (the fused block under autocast saved float32 weights
next to half activations and crashed in backward) is exercised here on CPU, whose autocast
runs the same code paths in bfloat16 and float16.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import restorekit.ext as ext
from restorekit.engine.config import (
    TrainConfig,
    auto_precision,
    native_bf16_cpu,
    resolve_precision,
)
from restorekit.engine.step import StepContextImpl
from restorekit.errors import UsageError
from restorekit.pipeline import Pipeline
from restorekit_pix2pixhd.model import Pix2PixHD
from restorekit_pix2pixhd.networks import ResnetBlock

REDUCED = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module", autouse=True)
def built(restorekit_ops):
    return restorekit_ops


def _block_pair(dim: int) -> tuple[ResnetBlock, ResnetBlock]:
    torch.manual_seed(0)
    plain, fused = ResnetBlock(dim), ResnetBlock(dim)
    fused.load_state_dict(plain.state_dict())
    fused.fused = True
    return plain, fused


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", REDUCED)
def test_fused_block_under_cpu_autocast_matches_eager(dtype):
    # Both blocks run under autocast; each is compared with the float64 block. The fused
    # block keeps its activations in the autocast dtype: its error may not exceed eager's
    # (which runs instance norm in float32) by more than a margin of the dtype's resolution.
    plain, fused = _block_pair(6)
    x = torch.randn(2, 6, 12, 10) * 2 + 0.5
    ref_block = ResnetBlock(6).double()
    ref_block.load_state_dict(plain.state_dict())
    xr = x.double().requires_grad_(True)
    ref = ref_block(xr)
    g = torch.randn_like(ref)
    ref.backward(g)
    eps = torch.finfo(dtype).eps
    errors = {}
    for name, block in (("plain", plain), ("fused", fused)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype):
            y = block(xi)
        assert torch.isfinite(y).all()
        y.float().backward(g.float())
        w = block.conv_block[1].weight
        assert w.grad is not None and w.grad.dtype == torch.float32
        assert xi.grad.dtype == torch.float32
        errors[name] = (_max_err(y, ref), _max_err(xi.grad, xr.grad),
                        _max_err(w.grad, ref_block.conv_block[1].weight.grad))
    for got, eager in zip(errors["fused"], errors["plain"], strict=True):
        assert got <= 2 * eager + 64 * eps, errors


@pytest.mark.parametrize("dtype", REDUCED)
def test_fused_ops_in_reduced_precision_on_cpu(dtype):
    # The CPU kernels take float16/bfloat16 natively (float32 accumulation, float32 stats).
    x = (torch.randn(2, 3, 9, 11, dtype=torch.float64) * 2 + 0.5).to(dtype)
    out, mean, rstd = torch.ops.restorekit.instance_norm_act_with_stats(x, 1e-5, 0.2, 2)
    assert out.dtype == dtype and mean.dtype == torch.float32 and rstd.dtype == torch.float32
    want = ext._reference.instance_norm_act(x.double(), 1e-5, 0.2, 2)
    assert _max_err(out, want) <= 4 * torch.finfo(dtype).eps * want.abs().max().item()
    torch.testing.assert_close(mean, x.double().mean(dim=(2, 3)).float())


def _train(fused: bool, precision: str, steps: int = 2) -> tuple[list[dict], Pix2PixHD]:
    torch.manual_seed(0)
    options = Pix2PixHD.make_options(
        None, ngf=8, n_downsample_global=1, n_blocks_global=2, ndf=8, n_layers_D=2, num_D=1,
        crop_size=24, batch_size=2, niter=1, niter_decay=0, lambda_l1=10.0, fused=fused,
        precision=precision)
    model = Pix2PixHD(options, Pipeline())
    model.build(torch.device("cpu"))
    ctx = StepContextImpl(torch.device("cpu"), model.optimizers(), precision)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        low = torch.rand(2, 3, 24, 24, generator=gen) * 0.2
        high = torch.rand(2, 3, 24, 24, generator=gen)
        ctx.step = step
        losses.append({k: float(v) for k, v in model.train_step(low, high, ctx).items()})
    return losses, model


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fused_and_plain_train_alike_under_each_precision(precision):
    fused_losses, fused = _train(True, precision)
    plain_losses, plain = _train(False, precision)
    tol = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}[precision]
    for f, p in zip(fused_losses, plain_losses, strict=True):
        assert all(torch.isfinite(torch.tensor(v)) for v in f.values())
        for name in p:
            assert f[name] == pytest.approx(p[name], rel=tol, abs=tol), (name, f, p)
    # The weights stay float32 (autocast casts copies), and the trained generators agree.
    # (Weights are not compared one by one: a conv bias before an instance norm has a zero
    # gradient, and Adam turns its rounding noise into full-size steps of either sign.)
    assert all(p.dtype == torch.float32 for p in fused.netG.parameters())
    low = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5)) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(fused.enhance_tensor(low), plain.enhance_tensor(low),
                                   rtol=tol, atol=tol)


def test_precision_option_is_checked():
    with pytest.raises(UsageError, match="--precision: expected one of auto, fp32, bf16, fp16"):
        TrainConfig(precision="half")
    with pytest.raises(UsageError, match="--precision"):
        Pix2PixHD.make_options(None, precision="fp8")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == auto_precision(cpu)
    assert auto_precision(cpu) == ("bf16" if native_bf16_cpu() else "fp32")
    assert auto_precision(torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_step_context_scales_only_fp16():
    opts = {"G": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)}
    for precision, scaled in (("fp32", False), ("bf16", False), ("fp16", True)):
        ctx = StepContextImpl(torch.device("cpu"), opts, precision)
        assert ctx.scalers["G"].is_enabled() is scaled
        with ctx.autocast():
            y = torch.nn.functional.linear(torch.ones(1, 4), torch.ones(2, 4))
        want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        assert y.dtype == want[precision]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cli_trains_under_reduced_precision(tmp_path, monkeypatch, precision):
    from restorekit.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run", "pix2pixhd", "--train", "--name", "p", "--max-steps", "2",
                 "--ngf", "4", "--n-downsample-global", "1", "--n-blocks-global", "1",
                 "--ndf", "4", "--n-layers-D", "2", "--num-D", "1", "--crop-size", "32",
                 "--batch-size", "2", "--samples-per-epoch", "4", "--niter", "1",
                 "--niter-decay", "0", "--num-samples", "1", "--precision", precision])
    assert code == 0
    config = json.loads((tmp_path / "runs" / "p" / "config.json").read_text())
    assert config["precision"] == precision
    assert (tmp_path / "runs" / "p" / "checkpoints" / "last.safetensors").is_file()


@pytest.mark.parametrize("dtype", REDUCED)
def test_cpu_kernels_round_like_torch(dtype):
    # The CPU kernels convert reduced precision on the bits (vectorised): the result must be
    # torch's own rounding of the float32 result, bit for bit, special values included.
    ops = torch.ops.restorekit
    x = torch.randn(2, 3, 37, 41, generator=torch.Generator().manual_seed(0)) * 100
    for slope, pad in ((0.0, 1), (0.2, 0), (1.0, 3)):
        got = ops.instance_norm_act(x.to(dtype), 1e-5, slope, pad)
        want = ops.instance_norm_act(x.to(dtype).float(), 1e-5, slope, pad).to(dtype)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (slope, pad)
    specials = torch.tensor([0.0, -0.0, 1.00390625, 1.01171875, 65504.0, 7e4, 1e-8, 3e38,
                             1e-40, float("inf"), float("-inf"), float("nan")]).view(1, 1, 2, 6)
    got = ops.reflection_pad_backward(F.pad(specials, (1, 1, 1, 1)).to(dtype))
    want = ops.reflection_pad_backward(F.pad(specials, (1, 1, 1, 1)).to(dtype).float()).to(dtype)
    same = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
    assert bool(same.all())
