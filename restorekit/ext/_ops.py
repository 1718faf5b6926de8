"""Python halves of the restorekit ops: fake (meta) kernels and autograd formulas.

Registered once, right after the compiled library is loaded; the schemas live in
``csrc/registration.cpp``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from restorekit.ext._build import ExtensionError

_registered = False

# The ops' size limits, as csrc/common.h has them (kMaxPlaneNumel, kMaxPlanes): the CUDA kernels
# index a (padded) plane with 32-bit ints, a thread's index passing the plane's end by up to one
# tile, and run one block per plane; the CPU kernels keep the same limits.
MAX_PLANE_NUMEL = 2**31 - 1 - 65536
MAX_PLANES = 2**31 - 1
# Smaller allocations are not checked against the available memory (as in csrc/cpu/ops_cpu.cpp).
CHECK_MEMORY_ABOVE = 1 << 30
_REDUCED = (torch.float16, torch.bfloat16)


class ExtensionSizeError(ExtensionError, RuntimeError):
    """An op's input is larger than its kernels index, or than the memory available holds."""


def check_sizes(op: str, x: torch.Tensor, pad: int = 0) -> None:
    """Refuse planes (padded by ``pad``) or a plane count beyond the kernels' limits."""
    n, c, h, w = x.shape
    if (h + 2 * pad) * (w + 2 * pad) > MAX_PLANE_NUMEL:
        raise ExtensionSizeError(
            f"restorekit::{op}: a plane of {h}x{w} padded by {pad} ({h + 2 * pad}x"
            f"{w + 2 * pad}) is too large: at most {MAX_PLANE_NUMEL} elements per padded plane"
        )
    planes = n * c
    if planes > MAX_PLANES:
        raise ExtensionSizeError(
            f"restorekit::{op}: {planes} planes (N*C) are too many: at most {MAX_PLANES}"
        )


def available_memory(device: torch.device) -> int | None:
    """Bytes an op can still allocate on ``device``; None where that is unknown.

    CUDA: the device's free memory plus what torch's caching allocator holds unused. CPU:
    ``MemAvailable`` of ``/proc/meminfo`` (Linux).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_memory(
    op: str, x: torch.Tensor, out: int, floats: int, inputs: Iterable[torch.Tensor]
) -> None:
    """Refuse an op whose allocations the available memory cannot hold (as the CPU ops do).

    The allocations for ``x``'s planes: ``out`` output elements of ``x``'s dtype and two
    statistics per plane, a contiguous copy of each non-contiguous input, and on the CPU, for
    float16 and bfloat16, ``floats`` floats of scratch for every thread that runs a plane. Only
    shapes are read, and the available memory is asked only for large requests.
    """
    planes = x.shape[0] * x.shape[1]
    nbytes = planes * (out * x.element_size() + 16)
    for t in inputs:
        if not t.is_contiguous():
            nbytes += t.numel() * t.element_size()
    if x.dtype in _REDUCED and x.device.type == "cpu":
        nbytes += min(planes, torch.get_num_threads()) * floats * 4
    if nbytes < CHECK_MEMORY_ABOVE:
        return
    available = available_memory(x.device)
    if available is not None and nbytes > available:
        where = "" if x.device.type == "cpu" else f" on {x.device}"
        raise ExtensionSizeError(
            f"restorekit::{op}: needs {_gib(nbytes)} of memory{where} (outputs, copies and "
            f"scratch), only {_gib(available)} available"
        )


def check_instance_norm_act(x: torch.Tensor, pad: int) -> None:
    """instance_norm_act's size and memory checks, before any C++ runs."""
    check_sizes("instance_norm_act", x, pad)
    _, _, h, w = x.shape
    padded = (h + 2 * pad) * (w + 2 * pad)
    check_memory("instance_norm_act", x, padded, h * w + padded, (x,))


def check_instance_norm_add(x: torch.Tensor, residual: torch.Tensor) -> None:
    """instance_norm_add's size and memory checks, before any C++ runs."""
    check_sizes("instance_norm_add", x)
    _, _, h, w = x.shape
    check_memory("instance_norm_add", x, h * w, 3 * h * w, (x, residual))


def check_reflection_pad(x: torch.Tensor) -> None:
    """reflection_pad's size and memory checks, before any C++ runs."""
    check_sizes("reflection_pad", x, 1)
    _, _, h, w = x.shape
    check_memory("reflection_pad", x, (h + 2) * (w + 2), 0, (x,))


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _padded(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.new_empty((n, c, h + 2 * pad, w + 2 * pad))


def _unpadded(g: torch.Tensor) -> torch.Tensor:
    n, c, h, w = g.shape
    return g.new_empty((n, c, h - 2, w - 2))


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (x.shape[0], x.shape[1])
    return x.new_empty(shape, dtype=_stats_dtype(x)), x.new_empty(shape, dtype=_stats_dtype(x))


def _fake_reflection_pad(x: torch.Tensor) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: "reflection_pad expects an NCHW tensor")
    check_sizes("reflection_pad", x, 1)
    return _padded(x)


def _fake_reflection_pad_backward(grad_out: torch.Tensor) -> torch.Tensor:
    torch._check(grad_out.dim() == 4, lambda: "reflection_pad_backward expects NCHW")
    check_sizes("reflection_pad_backward", grad_out)
    return _unpadded(grad_out)


def _fake_reflection_pad_backward_add(grad_out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    torch._check(grad_out.dim() == 4, lambda: "reflection_pad_backward_add expects NCHW")
    check_sizes("reflection_pad_backward_add", grad_out)
    return _unpadded(grad_out)


def _fake_norm_act(
    x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0, pad: int = 0
) -> tuple[torch.Tensor, ...]:
    torch._check(x.dim() == 4, lambda: "instance_norm_act expects an NCHW tensor")
    check_sizes("instance_norm_act", x, pad)
    return (_padded(x, pad), *_stats(x))


def _fake_norm_act_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    negative_slope: float = 0.0,
    pad: int = 0,
) -> torch.Tensor:
    check_sizes("instance_norm_act_backward", x, pad)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_ina(x: torch.Tensor, residual: torch.Tensor, eps: float = 1e-5) -> tuple:
    torch._check(x.dim() == 4, lambda: "instance_norm_add expects an NCHW tensor")
    torch._check(residual.shape == x.shape, lambda: "residual must have the shape of x")
    check_sizes("instance_norm_add", x)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), *_stats(x))


def _fake_ina_backward(
    grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> torch.Tensor:
    check_sizes("instance_norm_add_backward", x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# --- autograd -------------------------------------------------------------------------------


def _pad_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    return torch.ops.restorekit.reflection_pad_backward(grad)


def _pad_backward_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    # reflection_pad_backward is the adjoint of the (linear) padding, so its gradient is the pad.
    return torch.ops.restorekit.reflection_pad(grad)


def _pad_backward_add_backward(ctx: Any, grad: torch.Tensor) -> tuple:
    return torch.ops.restorekit.reflection_pad(grad), grad


def _no_context(ctx: Any, inputs: tuple, output: Any) -> None:
    pass


def _setup_stats(ctx: Any, inputs: tuple, output: tuple) -> None:
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(inputs[0], mean, rstd)


def _setup_norm_act(ctx: Any, inputs: tuple, output: tuple) -> None:
    _setup_stats(ctx, inputs, output)
    ctx.negative_slope, ctx.pad = inputs[2], inputs[3]


def _norm_act_backward(ctx: Any, grad: torch.Tensor, _gm: Any, _gr: Any) -> tuple:
    x, mean, rstd = ctx.saved_tensors
    dx = torch.ops.restorekit.instance_norm_act_backward(
        grad, x, mean, rstd, ctx.negative_slope, ctx.pad
    )
    return dx, None, None, None


def _ina_backward(ctx: Any, grad: torch.Tensor, _gm: Any, _gr: Any) -> tuple:
    x, mean, rstd = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        dx = torch.ops.restorekit.instance_norm_add_backward(grad, x, mean, rstd)
    return dx, (grad if ctx.needs_input_grad[1] else None), None


def register() -> None:
    """Register fake kernels and autograd formulas for the loaded ``restorekit`` ops."""
    global _registered
    if _registered:
        return
    lib = "restorekit::"
    fakes = {
        "reflection_pad": _fake_reflection_pad,
        "reflection_pad_backward": _fake_reflection_pad_backward,
        "reflection_pad_backward_add": _fake_reflection_pad_backward_add,
        "instance_norm_act_with_stats": _fake_norm_act,
        "instance_norm_act_backward": _fake_norm_act_backward,
        "instance_norm_add_with_stats": _fake_ina,
        "instance_norm_add_backward": _fake_ina_backward,
    }
    for name, fn in fakes.items():
        torch.library.register_fake(lib + name, fn)
    torch.library.register_autograd(
        lib + "reflection_pad", _pad_backward, setup_context=_no_context
    )
    torch.library.register_autograd(
        lib + "reflection_pad_backward", _pad_backward_backward, setup_context=_no_context
    )
    torch.library.register_autograd(
        lib + "reflection_pad_backward_add",
        _pad_backward_add_backward,
        setup_context=_no_context,
    )
    torch.library.register_autograd(
        lib + "instance_norm_act_with_stats", _norm_act_backward, setup_context=_setup_norm_act
    )
    torch.library.register_autograd(
        lib + "instance_norm_add_with_stats", _ina_backward, setup_context=_setup_stats
    )
    _registered = True
