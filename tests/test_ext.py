"""Tests of the restorekit C++/CUDA extension (restorekit.ext) against plain PyTorch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import restorekit.ext as ext
from restorekit.errors import RestorekitError
from restorekit.ext import _build, _reference
from restorekit_pix2pixhd.networks import ResnetBlock

SHAPES = [(1, 1, 2, 2), (2, 3, 2, 2), (2, 3, 3, 5), (3, 4, 7, 9), (2, 5, 16, 16), (1, 2, 33, 40)]
GRAD_SHAPES = [(1, 2, 2, 2), (2, 3, 3, 5), (1, 2, 7, 9)]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fused_block(dim: int) -> ResnetBlock:
    """The plugin's ResnetBlock switched to the fused kernel (same layers, same state_dict)."""
    block = ResnetBlock(dim)
    block.fused = True
    return block


@pytest.fixture(scope="module")
def ops(restorekit_ops):
    return restorekit_ops


def _randn(shape, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 0.5
    return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)


# (negative_slope, pad) of instance_norm_act: the block's ReLU + pad 1, the discriminator's
# LeakyReLU 0.2, a norm without activation, the generator's last ReLU + pad 3, a ReLU alone.
ACT_VARIANTS = [(0.0, 1), (0.2, 0), (1.0, 0), (0.0, 3), (0.0, 0), (0.2, 2)]


def _act(fn, slope: float, pad: int):
    return lambda x: fn(x, 1e-5, slope, pad)


def _cases(ops, shape=None):
    """(name, fused function, reference function, number of tensor inputs) for ``shape``."""
    small = min(shape[2:]) if shape else 4
    cases = [("reflection_pad", ops.reflection_pad, _reference.reflection_pad, 1)]
    for slope, pad in ACT_VARIANTS:
        if pad < small:
            cases.append((f"instance_norm_act slope {slope} pad {pad}",
                          _act(ops.instance_norm_act, slope, pad),
                          _act(_reference.instance_norm_act, slope, pad), 1))
    cases.append((
        "instance_norm_add",
        lambda x, r: ops.instance_norm_add(x, r, 1e-5),
        lambda x, r: _reference.instance_norm_add(x, r, 1e-5),
        2,
    ))
    return cases


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_pytorch(ops, shape):
    for name, fused, ref, nin in _cases(ops, shape):
        args = [_randn(shape, seed=i) for i in range(nin)]
        torch.testing.assert_close(fused(*args), ref(*args), rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_pytorch(ops, shape):
    for name, fused, ref, nin in _cases(ops, shape):
        a = [_randn(shape, seed=i, requires_grad=True) for i in range(nin)]
        b = [t.detach().clone().requires_grad_(True) for t in a]
        y1, y2 = fused(*a), ref(*b)
        g = _randn(y1.shape, seed=7)
        d1 = torch.autograd.grad(y1, a, g)
        d2 = torch.autograd.grad(y2, b, g)
        for u, v in zip(d1, d2, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4, msg=name)


def test_stats_outputs(ops):
    x = _randn((2, 3, 5, 6))
    out, mean, rstd = ops.instance_norm_act_with_stats(x, 1e-5, 0.0, 1)
    torch.testing.assert_close(mean, x.mean(dim=(2, 3)))
    var = x.var(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5))
    assert out.shape == (2, 3, 7, 8)
    assert ops.instance_norm_act_with_stats(x, 1e-5, 0.2, 2)[0].shape == (2, 3, 9, 10)
    assert ops.instance_norm_act(x, 1e-5, 0.2, 0).shape == x.shape


def test_numerically_stable_variance(ops):
    # A large offset breaks the naive E[x^2] - E[x]^2 formula in float32.
    x = _randn((1, 2, 50, 60)) * 0.25 + 3000.0  # std 0.5, float32 spacing at 3000 is 2.4e-4
    ref = _reference.instance_norm_relu_pad(x.double(), 1e-5).float()
    torch.testing.assert_close(ops.instance_norm_act(x, 1e-5, 0.0, 1), ref, rtol=5e-3, atol=5e-3)
    _, _, rstd = ops.instance_norm_act_with_stats(x, 1e-5, 0.0, 1)
    true_rstd = torch.rsqrt(x.double().var(dim=(2, 3), unbiased=False) + 1e-5).float()
    torch.testing.assert_close(rstd, true_rstd, rtol=1e-4, atol=0)


def test_non_contiguous_input(ops):
    x = _randn((2, 3, 9, 7)).transpose(2, 3)
    torch.testing.assert_close(
        ops.instance_norm_act(x, 1e-5, 0.2, 2),
        _reference.instance_norm_act(x, 1e-5, 0.2, 2),
        rtol=1e-5,
        atol=1e-5,
    )
    cl = _randn((2, 4, 6, 5)).to(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.reflection_pad(cl), _reference.reflection_pad(cl))


def _every_op(ops):
    """Each op called with a tensor standing in for all of its tensor arguments."""
    ones = torch.ones(1, 1)
    return {
        "reflection_pad": lambda t: ops.reflection_pad(t),
        "reflection_pad_backward": lambda t: ops.reflection_pad_backward(t),
        "reflection_pad_backward_add": lambda t: ops.reflection_pad_backward_add(t, t),
        "instance_norm_act": lambda t: ops.instance_norm_act(t, 1e-5, 0.2, 1),
        "instance_norm_act_with_stats": lambda t: ops.instance_norm_act_with_stats(
            t, 1e-5, 0.0, 0),
        "instance_norm_act_backward": lambda t: ops.instance_norm_act_backward(
            t, t, ones, ones, 0.0, 0),
        "instance_norm_add": lambda t: ops.instance_norm_add(t, t, 1e-5),
        "instance_norm_add_with_stats": lambda t: ops.instance_norm_add_with_stats(t, t, 1e-5),
        "instance_norm_add_backward": lambda t: ops.instance_norm_add_backward(
            t, t, ones, ones),
    }


BAD_INPUTS = {
    "3-D": torch.randn(3, 4, 5),
    "1-D": torch.randn(5),
    "empty": torch.empty(0),
    "empty planes": torch.empty(1, 2, 0, 0),
    "int32": torch.ones(1, 2, 4, 4, dtype=torch.int32),
    "complex": torch.ones(1, 2, 4, 4, dtype=torch.complex64),
}


def _check_bad_inputs(ops) -> None:
    # Checked before dispatch and autograd: a RuntimeError naming the op, never a crash.
    for what, bad in BAD_INPUTS.items():
        for name, call in _every_op(ops).items():
            for requires_grad in (False, True):
                t = bad.clone()
                if requires_grad and t.is_floating_point():
                    t.requires_grad_(True)
                with pytest.raises(RuntimeError, match="restorekit::") as info:
                    call(t)
                assert "\n" not in str(info.value).strip(), (name, what)


def _check_bad_arguments(ops) -> None:
    with pytest.raises(RuntimeError, match="H >= 2"):
        ops.reflection_pad(torch.randn(1, 1, 1, 5))
    with pytest.raises(RuntimeError, match="NCHW"):
        ops.instance_norm_act(torch.randn(3, 4, 5), 1e-5)
    for pad in (-1, 4, 9):
        with pytest.raises(RuntimeError, match=f"reflection padding by {pad} needs"):
            ops.instance_norm_act(torch.randn(1, 2, 4, 9), 1e-5, 0.0, pad)
    with pytest.raises(RuntimeError, match="negative_slope must be finite"):
        ops.instance_norm_act(torch.randn(1, 2, 4, 4), 1e-5, float("nan"), 0)
    x = torch.randn(1, 2, 4, 4)
    _, m, r = ops.instance_norm_act_with_stats(x, 1e-5, 0.0, 1)
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        ops.instance_norm_act_backward(torch.randn(1, 2, 4, 4), x, m, r, 0.0, 1)
    with pytest.raises(RuntimeError, match="residual"):
        ops.instance_norm_add(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 5), 1e-5)
    with pytest.raises(RuntimeError, match="residual has dtype"):
        ops.instance_norm_add(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4).double(), 1e-5)
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
            ops.instance_norm_act(torch.randn(1, 2, 4, 4), eps, 0.0, 1)


def _in_child(check: str) -> None:
    """Run ``check(torch.ops.restorekit)`` in a child process: a crash fails the test with
    its signal instead of killing pytest (as it did under torch 2.11 on the GPU machine)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import torch, restorekit.ext as e, test_ext; assert e.load(); "
            f"test_ext.{check}(torch.ops.restorekit)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RESTOREKIT_EXT": "on"})
    if proc.returncode < 0:
        pytest.fail(f"the process crashed (signal {-proc.returncode}) on a bad input under "
                    f"torch {torch.__version__}; benchmarks/exception_probe.py shows whether "
                    f"this torch build survives any exception raised inside an extension op")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bad_inputs_raise_one_line(ops):
    _in_child("_check_bad_inputs")


def test_bad_arguments_raise(ops):
    _in_child("_check_bad_arguments")


def test_empty_batch_gives_empty_output(ops):
    # N = 0 (or C = 0) is a valid, empty batch, as in PyTorch.
    assert ops.instance_norm_act(torch.randn(0, 2, 4, 4), 1e-5, 0.0, 1).shape == (0, 2, 6, 6)
    assert ops.instance_norm_add(torch.randn(2, 0, 4, 4), torch.randn(2, 0, 4, 4)).shape == (
        2, 0, 4, 4)


# ------------------------------------------------------------------------ size limits
# A float16 plane of 2^31 + 8 elements (4 x 2^29 + 2) once got the process killed (SIGKILL,
# out of memory: 20 GiB of output and float scratch). Every op refuses such sizes up front.
# The tensors are expanded views (no memory); the checks run in a child process whose
# address space is capped, so that an op that does not refuse fails at its first large
# allocation instead of filling the machine's memory.
BIG_H, BIG_W = 4, 2**29 + 2  # 2^31 + 8 elements, over the limit of 2^31 - 65537
PLANE_LIMIT = "at most 2147418111 elements per padded plane"


def _expanded(shape, dtype=torch.float16, requires_grad=False):
    """A tensor of ``shape`` that holds one element."""
    one = torch.zeros((1,) * len(shape), dtype=dtype, requires_grad=requires_grad)
    return one.expand(shape)


def _cap_address_space() -> None:
    """Let this (child) process map at most 1 GiB more than it has mapped now."""
    import resource

    with open("/proc/self/status") as status:
        vm = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _big_calls(ops, x, pads=True):
    """Each op called on planes the shape of x's (the gradients and other inputs to match)."""
    n, c, h, w = x.shape
    stats = torch.zeros(1, 1).expand(n, c)
    grad1 = _expanded((n, c, h + 2, w + 2), x.dtype)
    calls = {
        "instance_norm_act": (lambda: ops.instance_norm_act(x, 1e-5, 0.2, 1), 1),
        "instance_norm_act_with_stats": (
            lambda: ops.instance_norm_act_with_stats(x, 1e-5, 0.0, 0), 0),
        "instance_norm_act_backward": (
            lambda: ops.instance_norm_act_backward(x, x, stats, stats, 0.0, 0), 0),
        "instance_norm_add": (lambda: ops.instance_norm_add(x, x, 1e-5), 0),
        "instance_norm_add_with_stats": (
            lambda: ops.instance_norm_add_with_stats(x, x, 1e-5), 0),
        "instance_norm_add_backward": (
            lambda: ops.instance_norm_add_backward(x, x, stats, stats), 0),
        "reflection_pad": (lambda: ops.reflection_pad(x), 1),
        "reflection_pad_backward": (lambda: ops.reflection_pad_backward(grad1), 0),
        "reflection_pad_backward_add": (
            lambda: ops.reflection_pad_backward_add(grad1, x), 0),
    }
    if not pads:  # planes of 1x1: no reflection padding
        calls = {k: v for k, v in calls.items() if "pad" not in k}
        calls["instance_norm_act"] = (lambda: ops.instance_norm_act(x, 1e-5, 0.2, 0), 0)
    return calls


def _check_plane_limit(ops) -> None:
    _cap_address_space()
    for requires_grad in (False, True):
        x = _expanded((1, 1, BIG_H, BIG_W), requires_grad=requires_grad)
        for name, (call, pad) in _big_calls(ops, x).items():
            # The backward ops see their gradient's plane: the padded one of reflection_pad's.
            h, w = (BIG_H + 2, BIG_W + 2) if name.startswith("reflection_pad_") else (BIG_H, BIG_W)
            want = (f"restorekit::{name.removesuffix('_with_stats')}: a plane of {h}x{w} "
                    f"padded by {pad} ({h + 2 * pad}x{w + 2 * pad}) is too large: {PLANE_LIMIT}")
            with pytest.raises(RuntimeError) as info:
                call()
            assert str(info.value) == want, (name, requires_grad)
    # The Python entry points refuse it before any C++ runs (with the same line).
    x = _expanded((1, 1, BIG_H, BIG_W))
    conv = nn.Conv2d(1, 1, 3)
    calls = ((lambda: ext.instance_norm_act(x, 1e-5, 0.0, 1), "instance_norm_act", 1),
             (lambda: ext.instance_norm_add(x, x), "instance_norm_add", 0),
             (lambda: ext.reflection_pad(x), "reflection_pad", 1),
             (lambda: ext.resnet_block(x, conv, conv), "resnet_block", 1))
    for call, name, pad in calls:
        with pytest.raises(ext.ExtensionSizeError, match=f"^restorekit::{name}: a plane of "
                           f"4x{BIG_W} padded by {pad} .* is too large: {PLANE_LIMIT}$"):
            call()


def _check_plane_count_limit(ops) -> None:
    _cap_address_space()
    x = _expanded((2**31, 1, 1, 1), torch.float32)
    for name, (call, _) in _big_calls(ops, x, pads=False).items():
        with pytest.raises(RuntimeError) as info:
            call()
        assert str(info.value) == (f"restorekit::{name.removesuffix('_with_stats')}: "
                                   "2147483648 planes (N*C) are too many: at most 2147483647")


def _check_memory_limit(ops) -> None:
    # Sizes the kernels index but no machine holds (16 TiB of float16): refused with what
    # the op needs (its output, a copy of the expanded input, float scratch per thread).
    _cap_address_space()
    torch.set_num_threads(2)
    x = _expanded((2**12, 1, 2**15, 2**15))
    for name, (call, _) in _big_calls(ops, x).items():
        with pytest.raises(RuntimeError, match=(
                rf"^restorekit::{name.removesuffix('_with_stats')}: needs \d+\.\d GiB of memory "
                r"\(outputs, copies and scratch\), only \d+\.\d GiB available$")):
            call()
    # instance_norm_add_with_stats: copies of x and residual (8 TiB each), the output (8 TiB),
    # statistics, and 2 threads x 3 planes of 2^30 floats of scratch (24 GiB).
    need = 3 * 2**42 * 2 + 2**12 * 16 + 2 * 3 * 2**30 * 4
    with pytest.raises(RuntimeError, match=f"needs {need / 2**30:.1f} GiB of memory"):
        ops.instance_norm_add_with_stats(x, x, 1e-5)
    # The Python entry points count the same bytes, and refuse before any C++ runs.
    for python, cpp in ((lambda: ext.instance_norm_act(x, 1e-5, 0.0, 1),
                         lambda: ops.instance_norm_act(x, 1e-5, 0.0, 1)),
                        (lambda: ext.instance_norm_add(x, x), lambda: ops.instance_norm_add(x, x)),
                        (lambda: ext.reflection_pad(x), lambda: ops.reflection_pad(x))):
        with pytest.raises(ext.ExtensionSizeError) as from_python:
            python()
        with pytest.raises(RuntimeError) as from_cpp:
            cpp()
        assert type(from_cpp.value) is RuntimeError
        needs = [str(e.value).split(", only")[0] for e in (from_python, from_cpp)]
        assert needs[0] == needs[1]


def _check_sizes_within_the_limits_run(ops) -> None:
    # A plane at the limit (padded or not) passes the size checks: the op goes on to the
    # memory check (the tensors stand for 2^12 planes of it, more than any machine holds).
    _cap_address_space()
    edge = _expanded((2**12, 1, 1, 2**31 - 65537), torch.float32)
    padded = _expanded((2**12, 1, 3, (2**31 - 65537) // 5 - 2), torch.float32)
    for call in (lambda: ops.instance_norm_act(edge, 1e-5, 0.0, 0),
                 lambda: ops.instance_norm_add_with_stats(edge, edge, 1e-5),
                 lambda: ops.instance_norm_act_with_stats(padded, 1e-5, 0.0, 1)):
        with pytest.raises(RuntimeError, match="needs .* GiB of memory"):
            call()


needs_linux = pytest.mark.skipif(not Path("/proc/meminfo").exists(),
                                 reason="the memory check reads /proc/meminfo (Linux)")


@needs_linux
def test_planes_beyond_the_kernels_limit_are_refused(ops):
    _in_child("_check_plane_limit")


@needs_linux
def test_too_many_planes_are_refused(ops):
    _in_child("_check_plane_count_limit")


@needs_linux
def test_sizes_beyond_the_available_memory_are_refused(ops):
    _in_child("_check_memory_limit")


@needs_linux
def test_sizes_at_the_limit_pass_the_size_checks(ops):
    _in_child("_check_sizes_within_the_limits_run")


def test_meta_tensors_are_checked_against_the_same_limits(ops):
    # The fake kernels (torch.compile, meta tensors) and the composite ops refuse the same
    # sizes; a plane at the limit gives its output's shape.
    limit = 2**31 - 65537
    at_limit = torch.empty(1, 1, 1, limit, device="meta")
    assert ops.instance_norm_act(at_limit, 1e-5, 0.0, 0).shape == at_limit.shape
    assert ops.instance_norm_add_with_stats(at_limit, at_limit, 1e-5)[0].shape == at_limit.shape
    padded = torch.empty(1, 1, 3, limit // 5 - 2, device="meta")
    assert ops.instance_norm_act_with_stats(padded, 1e-5, 0.0, 1)[0].shape == (
        1, 1, 5, limit // 5)
    over = torch.empty(1, 1, 1, limit + 1, device="meta")
    for call in (lambda: ops.instance_norm_act(over, 1e-5, 0.0, 0),
                 lambda: ops.instance_norm_act_with_stats(over, 1e-5, 0.0, 0),
                 lambda: ops.instance_norm_add(over, over, 1e-5),
                 lambda: ops.instance_norm_add_with_stats(over, over, 1e-5),
                 lambda: ops.instance_norm_act_with_stats(
                     torch.empty(1, 1, 3, limit // 5 - 1, device="meta"), 1e-5, 0.0, 1)):
        with pytest.raises(RuntimeError, match=f"is too large: {PLANE_LIMIT}"):
            call()


def test_python_memory_check_asks_the_device(monkeypatch):
    # CUDA: the device's free memory plus what torch's caching allocator holds unused.
    from restorekit.ext import _ops

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * 2**30)
    assert _ops.available_memory(torch.device("cuda", 0)) == 4 * 2**30
    # The check asks only for large requests, and refuses what the memory cannot hold.
    monkeypatch.setattr(_ops, "available_memory", lambda device: 2**30)
    x = torch.zeros(1, 2, 8, 8)
    _ops.check_instance_norm_act(x, 1)
    monkeypatch.setattr(_ops, "CHECK_MEMORY_ABOVE", 0)
    _ops.check_memory("instance_norm_act", x, 100, 0, (x,))
    with pytest.raises(ext.ExtensionSizeError, match=(
            r"^restorekit::instance_norm_act: needs 2\.0 GiB of memory \(outputs, copies and "
            r"scratch\), only 1\.0 GiB available$")):
        _ops.check_memory("instance_norm_act", x, 2**28 + 1, 0, (x,))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda_only)])
def test_constant_plane_with_zero_eps_is_zero_like_pytorch(ops, device):
    # Also for constants whose sum is not exact (0.1) and planes long enough for the CUDA
    # kernels' multi-block path.
    for value in (3.0, 0.1, -7.77):
        for shape in ((1, 2, 5, 6), (1, 2, 130, 150)):
            x = torch.full(shape, value, device=device)
            want = torch.nn.functional.instance_norm(x, eps=0.0)
            assert torch.equal(want, torch.zeros_like(x))
            torch.testing.assert_close(ops.instance_norm_add(x, x, 0.0), want + x)
            out = ops.instance_norm_act(x, 0.0, 0.0, 1)
            assert torch.equal(out, torch.zeros_like(out)), (value, shape)
            for dtype in (torch.bfloat16, torch.float64):
                out = ops.instance_norm_act(x.to(dtype), 0.0, 0.2, 0)
                assert torch.equal(out, torch.zeros_like(out)), (value, shape, dtype)


# ------------------------------------------------------------------- gradcheck and opcheck


@pytest.mark.parametrize("shape", GRAD_SHAPES)
def test_gradcheck(ops, shape):
    for name, fused, _, nin in _cases(ops, shape):
        args = [_randn(shape, dtype=torch.float64, seed=i, requires_grad=True) for i in range(nin)]
        assert torch.autograd.gradcheck(fused, args, eps=1e-6, atol=1e-5), name
    g = _randn((shape[0], shape[1], shape[2] + 2, shape[3] + 2), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.reflection_pad_backward, (g,))
    x = _randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(ops.reflection_pad, (x,))


@pytest.mark.parametrize("case", ["instance_norm_act", "instance_norm_add", "block"])
def test_double_backward_is_a_clear_error(ops, case):
    # Double backward through the normalising ops is not implemented: it must fail with one
    # clear error instead of returning wrong values (as it once did with a UserWarning).
    torch.manual_seed(0)
    x = _randn((1, 2, 5, 6), torch.float64, requires_grad=True)
    r = _randn((1, 2, 5, 6), torch.float64, seed=1, requires_grad=True)
    block = _fused_block(2).double()
    fn = {
        "instance_norm_act": lambda: ops.instance_norm_act(x, 1e-5, 0.2, 1),
        "instance_norm_add": lambda: ops.instance_norm_add(x, r, 1e-5),
        "block": lambda: block(x),
    }[case]
    with pytest.raises(RuntimeError, match="double backward through restorekit's fused"):
        torch.autograd.gradgradcheck(lambda _x: fn(), (x,))
    # First-order gradients with create_graph=True still work (e.g. to be logged).
    (g,) = torch.autograd.grad(fn().square().sum(), x, create_graph=True)
    assert torch.isfinite(g).all()


def _opcheck_cases(ops):
    x = _randn((2, 3, 5, 4), requires_grad=True)
    r = _randn((2, 3, 5, 4), seed=1, requires_grad=True)
    xd, rd = x.detach(), r.detach()
    gp = _randn((2, 3, 7, 6), seed=2)
    gp2 = _randn((2, 3, 9, 8), seed=5)
    _, m1, s1 = ops.instance_norm_act_with_stats(xd, 1e-5, 0.0, 1)
    _, m2, s2 = ops.instance_norm_add_with_stats(xd, rd, 1e-5)
    return [
        (ops.reflection_pad.default, (x,)),
        (ops.reflection_pad_backward.default, (gp.clone().requires_grad_(True),)),
        (ops.reflection_pad_backward_add.default, (gp.clone().requires_grad_(True), r)),
        (ops.instance_norm_act.default, (x, 1e-5, 0.0, 1)),
        (ops.instance_norm_act.default, (x, 1e-5, 0.2, 0)),
        (ops.instance_norm_act_with_stats.default, (x, 1e-5, 0.2, 2)),
        (ops.instance_norm_act_backward.default, (gp, xd, m1, s1, 0.0, 1)),
        (ops.instance_norm_act_backward.default, (gp2, xd, m1, s1, 0.2, 2)),
        (ops.instance_norm_add.default, (x, r, 1e-5)),
        (ops.instance_norm_add_with_stats.default, (x, r, 1e-5)),
        (ops.instance_norm_add_backward.default, (_randn((2, 3, 5, 4), seed=3), xd, m2, s2)),
    ]


def test_opcheck(ops):
    for op, args in _opcheck_cases(ops):
        torch.library.opcheck(op, args)


def test_aot_compile_block(ops):
    torch.manual_seed(0)
    block = _fused_block(4)
    x = _randn((2, 4, 6, 7), requires_grad=True)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, block(x))
    y.sum().backward()
    assert x.grad is not None


def test_aot_compile_instance_norm_act(ops):
    # The public op's autograd is a C++ kernel (registration.cpp): it must trace under compile.
    x1 = _randn((2, 3, 6, 5), requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = _randn((2, 3, 10, 9), seed=4)
    compiled = torch.compile(
        lambda t: ops.instance_norm_act(t, 1e-5, 0.2, 2), backend="aot_eager", fullgraph=True
    )
    y1, y2 = compiled(x1), _reference.instance_norm_act(x2, 1e-5, 0.2, 2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- fused norms in a network


def _plain_net() -> nn.Sequential:
    """Every run the pass knows, plus layers it must leave alone."""
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(3, 4, 7),
        nn.InstanceNorm2d(4), nn.ReLU(True),                          # -> slope 0, pad 0
        nn.Conv2d(4, 4, 3, padding=1),
        nn.InstanceNorm2d(4), nn.LeakyReLU(0.2, True),                # -> slope 0.2
        nn.Conv2d(4, 4, 3, padding=1),
        nn.InstanceNorm2d(4), nn.ReLU(True), nn.ReflectionPad2d(2),   # -> pad 2
        nn.Conv2d(4, 4, 3),
        nn.InstanceNorm2d(4),                                         # -> slope 1 (none)
        nn.Sequential(nn.InstanceNorm2d(4, affine=True), nn.ReLU()),  # affine: left alone
        nn.ReflectionPad2d((1, 0, 1, 0)), nn.Tanh(),                  # not square: left alone
    )


def test_fuse_instance_norms_keeps_state_dict_and_results(ops):
    torch.manual_seed(0)
    plain = _plain_net().double()
    fused = _plain_net().double()
    fused.load_state_dict(plain.state_dict())
    assert ext.fuse_instance_norms(fused) == 4
    layers = [m for m in fused if isinstance(m, ext.InstanceNormAct)]
    assert [(m.negative_slope, m.pad) for m in layers] == [(0.0, 0), (0.2, 0), (0.0, 2), (1.0, 0)]
    assert isinstance(fused[13][0], nn.InstanceNorm2d)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    x1 = _randn((2, 3, 12, 14), torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = plain(x1), fused(x2)
    torch.testing.assert_close(y2, y1)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    for p1, p2 in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad)
    assert torch.autograd.gradcheck(fused, (_randn((1, 3, 9, 8), torch.float64,
                                                   requires_grad=True),))
    # ... and back: the original layers return in their places.
    assert ext.fuse_instance_norms(fused, False) == 4
    assert [type(m) for m in fused] == [type(m) for m in plain]
    torch.testing.assert_close(fused(x1), plain(x1))


def test_fused_norm_layer_uses_the_op(ops, monkeypatch):
    calls = []
    real = torch.ops.restorekit.instance_norm_act

    class Spy:
        def __call__(self, *args):
            calls.append(args[1:])
            return real(*args)

    monkeypatch.setattr(torch.ops.restorekit, "instance_norm_act", Spy())
    net = _plain_net()
    ext.fuse_instance_norms(net)
    net(_randn((1, 3, 12, 14)))
    assert calls == [(1e-5, 0.0, 0), (1e-5, 0.2, 0), (1e-5, 0.0, 2), (1e-5, 1.0, 0)]


# --------------------------------------------------------------------------- the fused block


@pytest.mark.parametrize("shape", [(1, 4, 2, 2), (2, 3, 7, 9), (2, 8, 16, 12)])
def test_fused_block_matches_plain(ops, shape):
    torch.manual_seed(0)
    plain = ResnetBlock(shape[1])
    fused = _fused_block(shape[1])
    fused.load_state_dict(plain.state_dict())
    assert list(fused.state_dict()) == list(plain.state_dict())
    x1 = _randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = plain(x1), fused(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    g = _randn(shape, seed=3)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-4)
    for (n1, p1), (n2, p2) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=2e-4, msg=n1)


def test_fused_block_gradcheck(ops):
    torch.manual_seed(0)
    block = _fused_block(2).double()
    x = _randn((2, 2, 4, 5), dtype=torch.float64, requires_grad=True)
    params = tuple(block.parameters())

    def f(x, *ps):
        return ext.resnet_block(x, block.conv_block[1], block.conv_block[5])

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("frozen", ["input", "weights"])
def test_fused_block_partial_grads(ops, frozen):
    torch.manual_seed(0)
    plain = ResnetBlock(3)
    fused = _fused_block(3)
    fused.load_state_dict(plain.state_dict())
    x = _randn((1, 3, 6, 7), requires_grad=frozen != "input")
    for m in (plain, fused):
        m.conv_block[1].requires_grad_(frozen != "weights")
    plain(x).sum().backward()
    want = x.grad.clone() if x.grad is not None else None
    x.grad = None
    fused(x).sum().backward()
    if want is not None:
        torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-4)
    for p1, p2 in zip(plain.parameters(), fused.parameters(), strict=True):
        assert (p1.grad is None) == (p2.grad is None)
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=2e-4)


def test_state_dict_round_trip(ops):
    fused = _fused_block(3)
    plain = ResnetBlock(3)
    plain.load_state_dict(fused.state_dict())
    assert set(plain.state_dict()) == {
        "conv_block.1.weight",
        "conv_block.1.bias",
        "conv_block.5.weight",
        "conv_block.5.bias",
    }
    x = _randn((1, 3, 5, 5))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_resnet_block_function_uses_ops(ops, monkeypatch):
    torch.manual_seed(0)
    plain = ResnetBlock(3)
    calls = []
    monkeypatch.setattr(_reference, "resnet_block", lambda *a, **k: calls.append(a))
    x = _randn((1, 3, 6, 6))
    with torch.no_grad():
        y = ext.resnet_block(x, plain.conv_block[1], plain.conv_block[5])
        torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-5)
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_block_runs_fused_on_cpu(ops, dtype, monkeypatch):
    # float16/bfloat16 run through the kernels (no fallback); error of the same order as
    # eager PyTorch's in that dtype, both measured against float64.
    plain, fused = ResnetBlock(3), _fused_block(3)
    fused.load_state_dict(plain.state_dict())
    ref = ResnetBlock(3).double()
    ref.load_state_dict(plain.state_dict())
    monkeypatch.setattr(_reference, "resnet_block", lambda *a, **k: pytest.fail("fell back"))
    x = _randn((2, 3, 9, 8))
    with torch.no_grad():
        want = ref(x.double())
        y_fused = fused.to(dtype)(x.to(dtype))
        y_plain = plain.to(dtype)(x.to(dtype))
    assert y_fused.dtype == dtype
    err_fused = (y_fused.double() - want).abs().max().item()
    err_plain = (y_plain.double() - want).abs().max().item()
    assert err_fused <= err_plain + 16 * torch.finfo(dtype).eps * want.abs().max().item()


def test_import_builds_nothing():
    code = ("import restorekit.ext, restorekit.ext._build as b; "
            "print(b.state().attempted)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------- selection and build paths


def test_off_uses_plain_pytorch(ops, monkeypatch):
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    assert ext.load() is False
    torch.manual_seed(0)
    plain = ResnetBlock(3)
    x = _randn((2, 3, 6, 5))
    with torch.no_grad():
        torch.testing.assert_close(
            ext.resnet_block(x, plain.conv_block[1], plain.conv_block[5]), plain(x)
        )
        torch.testing.assert_close(
            ext.instance_norm_relu_pad(x), _reference.instance_norm_relu_pad(x)
        )
    s = ext.status()
    assert s["mode"] == "off"
    assert "disabled" in ext.describe()


def test_invalid_mode(monkeypatch):
    monkeypatch.setenv("RESTOREKIT_EXT", "maybe")
    with pytest.raises(ext.ExtensionError, match="auto, off, on"):
        ext.load()


def test_status_and_describe_when_built(ops, monkeypatch):
    monkeypatch.setenv("RESTOREKIT_EXT", "auto")
    s = ext.status()
    assert s["built"] is True and "cpu" in s["devices"]
    assert s["library"] and s["cache_dir"] in s["library"]
    text = ext.describe()
    assert "built for cpu" in text and s["cache_dir"] in text


@pytest.fixture
def broken_build(tmp_path, monkeypatch):
    """A fresh, unbuilt state whose sources do not compile."""
    src = tmp_path / "csrc"
    (src / "cpu").mkdir(parents=True)
    (src / "registration.cpp").write_text("#error restorekit test: deliberately broken\n")
    monkeypatch.setattr(_build, "source_dir", lambda: src)
    monkeypatch.setattr(_build, "_STATE", _build.BuildState())
    monkeypatch.setattr(_build, "_REGISTERED_LIBRARY", None)
    monkeypatch.setattr(ext, "_warned", False)
    monkeypatch.setenv("RESTOREKIT_CACHE", str(tmp_path / "cache"))
    return src


def test_failed_build_auto_warns_and_falls_back(ops, broken_build, monkeypatch, capsys):
    monkeypatch.setenv("RESTOREKIT_EXT", "auto")
    torch.manual_seed(0)
    plain = ResnetBlock(2)
    x = _randn((1, 2, 4, 4))
    y = ext.resnet_block(x, plain.conv_block[1], plain.conv_block[5])
    ext.resnet_block(x, plain.conv_block[1], plain.conv_block[5])
    (line,) = capsys.readouterr().err.splitlines()  # one warning, one line
    assert line.startswith("restorekit: warning: restorekit extension unavailable, using plain "
                           "PyTorch: ") and "deliberately broken" in line
    with torch.no_grad():
        torch.testing.assert_close(y, plain(x))
    st = _build.state()
    assert not st.ok and "deliberately broken" in st.error
    assert st.log_path is not None and st.log_path.is_file()
    text = ext.describe()
    assert "NOT built" in text and "deliberately broken" in text and str(st.log_path) in text


def test_failed_build_on_raises(ops, broken_build, monkeypatch):
    monkeypatch.setenv("RESTOREKIT_EXT", "on")
    with pytest.raises(ext.ExtensionBuildError, match="deliberately broken") as info:
        ext.resnet_block(_randn((1, 2, 4, 4)), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    assert "error" in info.value.log
    assert "\n" not in str(info.value)
    assert isinstance(info.value, RestorekitError)


def test_build_key_tracks_sources(tmp_path):
    src = tmp_path / "csrc"
    (src / "cpu").mkdir(parents=True)
    (src / "registration.cpp").write_text("// a\n")
    k1 = _build.build_key(src, False)
    assert _build.build_key(src, False) == k1
    (src / "cpu" / "ops_cpu.cpp").write_text("// b\n")
    assert _build.build_key(src, False) != k1
    assert _build.build_key(src, True) != _build.build_key(src, False)


def test_import_restorekit_stays_light():
    code = "import sys, restorekit; print('restorekit.ext' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


CHECK_NVCC = Path(__file__).resolve().parents[1] / "scripts" / "check_nvcc.sh"


def test_check_nvcc_script_runs():
    # The script uses the interpreter running the tests (an unactivated venv too).
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(CHECK_NVCC)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    if shutil.which("nvcc"):
        assert "ok     cuda/ops_cuda.cpp (syntax, against torch's headers)" in res.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_check_nvcc_catches_broken_cuda_glue(tmp_path):
    # A copy of csrc/ with a one-line kernel (fast to compile) and a glue file that names an
    # undeclared function: the glue check must fail and name the file.
    src = tmp_path / "csrc"
    shutil.copytree(_build.source_dir(), src)
    (src / "cuda" / "kernels.cu").write_text("__global__ void k() {}\n")
    glue = src / "cuda" / "ops_cuda.cpp"
    glue.write_text(glue.read_text().replace("check_launch(", "check_lunch(", 1))
    env = {**os.environ, "PYTHON": sys.executable, "CSRC": str(src)}
    res = subprocess.run(["bash", str(CHECK_NVCC)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 1
    assert "FAILED cuda/ops_cuda.cpp" in res.stderr


# ------------------------------------------------------------------------------------- CUDA


# Small planes, one block per plane; few large planes (split reductions), with and without
# 16-byte aligned plane lengths; many mid-sized planes.
CUDA_SHAPES = [(2, 3, 2, 2), (2, 3, 7, 9), (1, 4, 130, 150), (1, 3, 257, 301), (3, 40, 33, 64)]


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_float32_matches_cpu(ops, shape):
    for name, fused, _, nin in _cases(ops, shape):
        cpu = [_randn(shape, seed=i, requires_grad=True) for i in range(nin)]
        dev = [t.detach().cuda().requires_grad_(True) for t in cpu]
        y_cpu, y_dev = fused(*cpu), fused(*dev)
        torch.testing.assert_close(y_dev.cpu(), y_cpu, rtol=1e-4, atol=1e-4, msg=name)
        g = _randn(y_cpu.shape, seed=9)
        d_cpu = torch.autograd.grad(y_cpu, cpu, g)
        d_dev = torch.autograd.grad(y_dev, dev, g.cuda())
        for u, v in zip(d_dev, d_cpu, strict=True):
            torch.testing.assert_close(u.cpu(), v, rtol=1e-4, atol=4e-4, msg=name)


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_reduced_precision_as_accurate_as_eager(ops, dtype, shape):
    # Reduced precision is judged against eager PyTorch in the same dtype on the same device,
    # both measured against float64: the fused error may not exceed eager's by more than a
    # small margin (a fixed tolerance against float32 fails for honest bfloat16 results).
    for name, fused, ref, nin in _cases(ops, shape):
        exact = [_randn(shape, torch.float64, "cuda", seed=i, requires_grad=True)
                 for i in range(nin)]
        low = [t.detach().to(dtype).requires_grad_(True) for t in exact]
        low2 = [t.detach().clone().requires_grad_(True) for t in low]
        y64, y_fused, y_eager = ref(*exact), fused(*low), ref(*low2)
        assert y_fused.dtype == dtype
        g = _randn(y64.shape, torch.float64, "cuda", seed=9)
        d64 = torch.autograd.grad(y64, exact, g)
        d_fused = torch.autograd.grad(y_fused, low, g.to(dtype))
        d_eager = torch.autograd.grad(y_eager, low2, g.to(dtype))
        margin = 8 * torch.finfo(dtype).eps
        scale = y64.abs().max().item()
        e_fused = (y_fused.double() - y64).abs().max().item()
        e_eager = (y_eager.double() - y64).abs().max().item()
        assert e_fused <= e_eager + margin * scale, (name, e_fused, e_eager)
        for u, v, w in zip(d_fused, d_eager, d64, strict=True):
            e_fused = (u.double() - w).abs().max().item()
            e_eager = (v.double() - w).abs().max().item()
            assert e_fused <= 1.5 * e_eager + margin * w.abs().max().item(), (
                name, e_fused, e_eager)


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_fused_block_under_autocast(ops, dtype):
    # The crash of the first GPU run: autocast forward, float32 weights saved for backward.
    torch.manual_seed(0)
    plain, fused = ResnetBlock(8).cuda(), _fused_block(8).cuda()
    fused.load_state_dict(plain.state_dict())
    x = _randn((2, 8, 20, 24), device="cuda")
    outs = []
    for block in (plain, fused):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype):
            y = block(xi)
        y.float().square().mean().backward()
        assert block.conv_block[1].weight.grad.dtype == torch.float32
        outs.append((y.float(), xi.grad, block.conv_block[5].weight.grad))
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@cuda_only
@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck(ops):
    for shape in [(2, 2, 3, 5), (1, 2, 9, 130)]:
        for name, fused, _, nin in _cases(ops, shape):
            args = [
                _randn(shape, torch.float64, "cuda", seed=i, requires_grad=True)
                for i in range(nin)
            ]
            assert torch.autograd.gradcheck(fused, args, eps=1e-6, atol=1e-5), name
    x = _randn((2, 3, 5, 4), device="cuda", requires_grad=True)
    torch.library.opcheck(ops.instance_norm_act_with_stats.default, (x, 1e-5, 0.2, 2))
    torch.library.opcheck(ops.instance_norm_add_with_stats.default, (x, x.detach() * 2, 1e-5))
    torch.library.opcheck(ops.reflection_pad.default, (x,))


@cuda_only
@pytest.mark.cuda
def test_cuda_fused_block_matches_plain(ops):
    torch.manual_seed(0)
    plain = ResnetBlock(8).cuda()
    fused = _fused_block(8).cuda()
    fused.load_state_dict(plain.state_dict())
    x1 = _randn((2, 8, 20, 24), device="cuda", requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = plain(x1), fused(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-3, atol=1e-3)
    for p1, p2 in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-3, atol=1e-3)


@cuda_only
@pytest.mark.cuda
def test_cuda_ops_capture_in_a_cuda_graph(ops):
    # No host syncs and no allocations outside torch's allocator: forward and backward of
    # every op replay from a CUDA graph with the eager results.
    shape = (1, 8, 130, 150)
    x = _randn(shape, device="cuda", requires_grad=True)
    r = _randn(shape, device="cuda", seed=1)

    def step():
        y = ops.instance_norm_act(x, 1e-5, 0.2, 2)
        z = ops.instance_norm_add(ops.reflection_pad(x)[:, :, 1:-1, 1:-1].contiguous(), r)
        (gx,) = torch.autograd.grad((y.square().sum() + z.square().sum()), x)
        return y, z, gx

    want = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step()
    x.data.copy_(x.data)  # same input: the replay must give the eager results
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@cuda_only
@pytest.mark.cuda
def test_cuda_split_reduction_is_numerically_stable(ops):
    # Few large planes take the multi-block path: its merged variance must stay accurate
    # under a large offset, as the one-block path does.
    x = _randn((1, 2, 300, 400), device="cuda") * 0.25 + 3000.0
    _, _, rstd = ops.instance_norm_act_with_stats(x, 1e-5, 0.0, 0)
    true_rstd = torch.rsqrt(x.double().var(dim=(2, 3), unbiased=False) + 1e-5).float()
    torch.testing.assert_close(rstd, true_rstd, rtol=1e-4, atol=0)


def test_a_killed_builds_stale_lock_does_not_hang_the_next_build(broken_build, monkeypatch):
    """Was: a build killed mid-way left torch's ``lock`` file and every later run waited
    for it forever (issue 19: nothing hangs)."""
    import threading

    monkeypatch.setenv("RESTOREKIT_EXT", "auto")
    key = _build.build_key(broken_build, _build.cuda_wanted())
    cache = _build.cache_root() / key
    cache.mkdir(parents=True)
    (cache / "lock").write_text("")  # what a killed torch build leaves behind
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_build.ensure(), done.set()), daemon=True)
    thread.start()
    assert done.wait(180), "the build waited for a dead builder's lock"
    st = _build.state()
    assert not st.ok and "deliberately broken" in st.error  # it really compiled


def test_a_stop_while_building_is_not_a_build_failure(broken_build, monkeypatch):
    """A SIGTERM under torchrun (raised as a restorekit error) stops the process; it is
    not recorded as "extension unavailable" with the rank carrying on."""
    from restorekit.errors import TrainingError

    def stopped(*args, **kwargs):
        raise TrainingError("training stopped by SIGTERM")

    monkeypatch.setattr(_build, "_compile", stopped)
    with pytest.raises(TrainingError, match="SIGTERM"):
        _build.ensure()
    assert not _build.state().ok
