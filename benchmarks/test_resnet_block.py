"""Benchmarks: the fused instance-norm op and the fused ResnetBlock, float32 and bfloat16.

Ops (``test_op``): ``instance_norm_act`` against ``F.instance_norm -> relu / leaky_relu ->
F.pad(reflect)`` in two variants, the block's ("op1": ReLU, pad 1) and the discriminator's
("opL": LeakyReLU 0.2, no pad). On CUDA each op is timed twice: ``timing: graph`` captures a
call in a CUDA graph and queues the replays back to back, so the time is the device's
(kernels only, no launch overhead, what the GB/s means); ``timing: queued`` queues plain calls,
Python and launches included, as an eager step pays them. ``bytes`` is what an ideal
implementation moves, for the GB/s of ``benchmarks/ratios.py``.

Blocks (``test_block``): the fused ResnetBlock against eager, ``torch.compile`` of the plain
block ("compile"), ``torch.compile`` of ``ext.resnet_block`` ("compile-fused") and its two
convolutions alone ("floor"), with the block and input in the benchmark's dtype; on CUDA a
round queues several calls back to back as training would (Python overhead included).

bfloat16 runs on CPU only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere
it is emulated and too slow to be worth timing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from bench_common import (
    DTYPES,
    ROUNDS,
    SHAPES,
    calls_per_round,
    captured_in_cuda_graph,
    make_seeded,
    run_benchmark,
)

import restorekit.ext as ext
from restorekit_pix2pixhd.networks import ResnetBlock

EPS = 1e-5
MODES = ["fwd", "fwdbwd"]

# Variant -> (negative_slope, pad) of instance_norm_act.
OP_VARIANTS: dict[str, tuple[float, int]] = {
    "op1": (0.0, 1),  # ResnetBlock: InstanceNorm2d -> ReLU -> ReflectionPad2d(1)
    "opL": (0.2, 0),  # discriminator: InstanceNorm2d -> LeakyReLU(0.2)
}


def eager_op(x: torch.Tensor, negative_slope: float, pad: int) -> torch.Tensor:
    """The unfused op as plain PyTorch layers compute it."""
    y = F.instance_norm(x, eps=EPS)
    y = torch.relu(y) if negative_slope == 0.0 else F.leaky_relu(y, negative_slope)
    return F.pad(y, (pad, pad, pad, pad), mode="reflect") if pad else y


def _eager_op1(x: torch.Tensor) -> torch.Tensor:
    """The block's unfused op (for benchmarks/interleaved.py)."""
    return eager_op(x, *OP_VARIANTS["op1"])


def ideal_op_bytes(shape: tuple[int, int, int, int], pad: int, mode: str,
                   element_size: int) -> int:
    """Bytes an ideal op moves: forward reads x and writes the padded output once; backward
    reads the padded gradient and x once and writes dx once."""
    n, c, h, w = shape
    plane, padded = h * w, (h + 2 * pad) * (w + 2 * pad)
    elements = plane + padded
    if mode == "fwdbwd":
        elements += padded + 2 * plane
    return n * c * elements * element_size


def _fwd(f: Callable, *args: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            f(*args)

    return run


def _fwdbwd(f: Callable, inputs: tuple, wrt: tuple,
            grad: torch.Tensor | tuple) -> Callable[[], None]:
    def run() -> None:
        torch.autograd.grad(f(*inputs), wrt, grad)

    return run


@pytest.mark.parametrize("timing", ["graph", "queued"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("variant", list(OP_VARIANTS))
def test_op(benchmark, restorekit_ops, shape_id, device, dtype_name, variant, impl, mode,
            timing):
    """instance_norm_act vs InstanceNorm2d + activation (+ ReflectionPad2d)."""
    if device != "cuda" and timing == "graph":
        pytest.skip("CUDA graphs need a CUDA device")
    shape, dtype = SHAPES[shape_id], DTYPES[dtype_name]
    slope, pad = OP_VARIANTS[variant]
    x = make_seeded(shape, device, requires_grad=True, dtype=dtype)
    if impl == "fused":

        def f(t: torch.Tensor) -> torch.Tensor:
            return restorekit_ops.instance_norm_act(t, EPS, slope, pad)

    else:

        def f(t: torch.Tensor) -> torch.Tensor:
            return eager_op(t, slope, pad)

    if mode == "fwd":
        fn = _fwd(f, x)
    else:
        padded = (shape[0], shape[1], shape[2] + 2 * pad, shape[3] + 2 * pad)
        fn = _fwdbwd(f, (x,), (x,), make_seeded(padded, device, seed=1, dtype=dtype))
    if device != "cuda":
        timing = "wall"
    elif timing == "graph":
        replay = captured_in_cuda_graph(fn)
        if replay is None:
            pytest.skip("the op could not be captured in a CUDA graph")
        fn = replay
    run_benchmark(
        benchmark,
        fn,
        device=device,
        group=f"op {device} {shape_id} {dtype_name}",
        rounds=ROUNDS["op"],
        calls=calls_per_round("op", device),
        info={"case": variant, "impl": impl, "mode": mode, "shape": shape_id,
              "device": device, "dtype": dtype_name, "timing": timing,
              "bytes": ideal_op_bytes(shape, pad, mode, x.element_size())},
    )


def _compiled_or_skip(f: Callable, x: torch.Tensor, wrt: tuple, grad: torch.Tensor,
                      mode: str) -> Callable:
    """``torch.compile(f)`` for static shapes, compiled by one call; skips if that fails."""
    torch._dynamo.reset()  # a fresh cache: no recompile limit, no shapes left from other tests
    compiled = torch.compile(f, dynamic=False)
    try:
        if mode == "fwd":
            with torch.no_grad():
                compiled(x)
        else:
            torch.autograd.grad(compiled(x), wrt, grad)
    except Exception as exc:  # inductor needs a working C++ toolchain
        pytest.skip(f"torch.compile failed: {type(exc).__name__}: {exc}"[:300])
    return compiled


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["fused", "eager", "compile", "compile-fused", "floor"])
def test_block(benchmark, restorekit_ops, shape_id, device, dtype_name, impl, mode):
    """Whole ResnetBlock: fused vs eager vs torch.compile (plain and fused) vs the two
    convolutions alone."""
    shape, dtype = SHAPES[shape_id], DTYPES[dtype_name]
    torch.manual_seed(0)
    block = ResnetBlock(shape[1]).to(device, dtype)
    params = list(block.parameters())
    c1, c2 = block.conv_block[1], block.conv_block[5]
    x = make_seeded(shape, device, requires_grad=True, dtype=dtype)
    g = make_seeded(shape, device, seed=1, dtype=dtype)
    wrt = (x, *params)

    def fused(t: torch.Tensor) -> torch.Tensor:
        return ext.resnet_block(t, c1, c2)

    if impl == "floor":
        # Same convolutions on ready-padded inputs, nothing else.
        xp = F.pad(x.detach(), (1, 1, 1, 1), mode="reflect").requires_grad_(True)
        hp = make_seeded(xp.shape, device, seed=2, requires_grad=True, dtype=dtype)

        def convs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return F.conv2d(a, c1.weight, c1.bias), F.conv2d(b, c2.weight, c2.bias)

        if mode == "fwd":
            fn = _fwd(convs, xp, hp)
        else:
            fn = _fwdbwd(convs, (xp, hp), (xp, hp, *params), (g, g))
    else:
        if impl == "eager":
            f = block
        elif impl == "compile":
            f = _compiled_or_skip(block, x, wrt, g, mode)
        elif impl == "compile-fused":
            f = _compiled_or_skip(fused, x, wrt, g, mode)
        else:
            f = fused
        fn = _fwd(f, x) if mode == "fwd" else _fwdbwd(f, (x,), wrt, g)
    run_benchmark(
        benchmark,
        fn,
        device=device,
        group=f"block {device} {shape_id} {dtype_name}",
        rounds=ROUNDS["block"],
        calls=calls_per_round("block", device),
        info={"case": "block", "impl": impl, "mode": mode, "shape": shape_id,
              "device": device, "dtype": dtype_name},
    )
