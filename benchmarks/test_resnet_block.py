"""Benchmarks: fused instance_norm_relu_pad and fused ResnetBlock vs eager, torch.compile and
the two convolutions alone (the floor)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bench_common import ROUNDS, SHAPES, make_seeded, run_benchmark

import restorekit.ext as ext
from restorekit_pix2pixhd.networks import ResnetBlock

_compiled: dict = {}


def _eager_op1(x: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.relu(F.instance_norm(x, eps=1e-5)), (1, 1, 1, 1), mode="reflect")


def _fwd(f, *args):
    def run():
        with torch.no_grad():
            f(*args)

    return run


def _fwdbwd(f, inputs, wrt, grad):
    def run():
        torch.autograd.grad(f(*inputs), wrt, grad)

    return run


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_op1(benchmark, restorekit_ops, shape_id, device, impl, mode):
    """instance_norm_relu_pad vs InstanceNorm2d + ReLU + ReflectionPad2d."""
    shape = SHAPES[shape_id]
    x = make_seeded(shape, device, requires_grad=True)
    f = (
        (lambda t: restorekit_ops.instance_norm_relu_pad(t, 1e-5))
        if impl == "fused"
        else (_eager_op1)
    )
    if mode == "fwd":
        fn = _fwd(f, x)
    else:
        g = make_seeded((shape[0], shape[1], shape[2] + 2, shape[3] + 2), device, seed=1)
        fn = _fwdbwd(f, (x,), (x,), g)
    run_benchmark(
        benchmark,
        fn,
        device=device,
        group=f"{device} {shape_id}",
        rounds=ROUNDS["op"],
        info={"case": "op1", "impl": impl, "mode": mode, "shape": shape_id, "device": device},
    )


def _block(shape, device):
    torch.manual_seed(0)
    block = ResnetBlock(shape[1]).to(device)
    return block, [p for p in block.parameters()]


def _compiled_block(block, shape_id, device, mode):
    key = (shape_id, device, mode)
    if key not in _compiled:
        _compiled[key] = torch.compile(block)
    return _compiled[key]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", ["fused", "eager", "compile", "floor"])
def test_block(benchmark, restorekit_ops, shape_id, device, impl, mode):
    """Whole ResnetBlock: fused vs eager vs torch.compile vs the two convolutions alone."""
    shape = SHAPES[shape_id]
    block, params = _block(shape, device)
    c1, c2 = block.conv_block[1], block.conv_block[5]
    x = make_seeded(shape, device, requires_grad=True)
    g = make_seeded(shape, device, seed=1)
    if impl == "floor":
        # Same convolutions on ready-padded inputs, nothing else.
        xp = F.pad(x.detach(), (1, 1, 1, 1), mode="reflect").requires_grad_(True)
        hp = make_seeded(xp.shape, device, seed=2, requires_grad=True)

        def f(a, b):
            return F.conv2d(a, c1.weight, c1.bias), F.conv2d(b, c2.weight, c2.bias)

        if mode == "fwd":
            fn = _fwd(f, xp, hp)
        else:

            def fn():
                y1, y2 = f(xp, hp)
                torch.autograd.grad((y1, y2), (xp, hp, *params), (g, g))

    else:
        if impl == "fused":

            def f(t):
                return ext.resnet_block(t, c1, c2)

        elif impl == "eager":
            f = block
        else:
            f = _compiled_block(block, shape_id, device, mode)
            try:
                if mode == "fwd":
                    with torch.no_grad():
                        f(x)
                else:
                    torch.autograd.grad(f(x), (x, *params), g)
            except Exception as exc:  # inductor needs a working C++ toolchain
                pytest.skip(f"torch.compile failed: {type(exc).__name__}: {exc}"[:300])
        fn = _fwd(f, x) if mode == "fwd" else _fwdbwd(f, (x,), (x, *params), g)
    run_benchmark(
        benchmark,
        fn,
        device=device,
        group=f"{device} {shape_id}",
        rounds=ROUNDS["block"],
        info={"case": "block", "impl": impl, "mode": mode, "shape": shape_id, "device": device},
    )
