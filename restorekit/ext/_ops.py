"""Python halves of the restorekit ops: fake (meta) kernels and autograd formulas.

Registered once, right after the compiled library is loaded; the schemas live in
``csrc/registration.cpp``.
"""

from __future__ import annotations

from typing import Any

import torch

_registered = False


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
    return _padded(x)


def _fake_reflection_pad_backward(grad_out: torch.Tensor) -> torch.Tensor:
    torch._check(grad_out.dim() == 4, lambda: "reflection_pad_backward expects NCHW")
    return _unpadded(grad_out)


def _fake_reflection_pad_backward_add(grad_out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    torch._check(grad_out.dim() == 4, lambda: "reflection_pad_backward_add expects NCHW")
    return _unpadded(grad_out)


def _fake_norm_act(
    x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0, pad: int = 0
) -> tuple[torch.Tensor, ...]:
    torch._check(x.dim() == 4, lambda: "instance_norm_act expects an NCHW tensor")
    return (_padded(x, pad), *_stats(x))


def _fake_norm_act_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    negative_slope: float = 0.0,
    pad: int = 0,
) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_ina(x: torch.Tensor, residual: torch.Tensor, eps: float = 1e-5) -> tuple:
    torch._check(x.dim() == 4, lambda: "instance_norm_add expects an NCHW tensor")
    torch._check(residual.shape == x.shape, lambda: "residual must have the shape of x")
    return (torch.empty_like(x, memory_format=torch.contiguous_format), *_stats(x))


def _fake_ina_backward(
    grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> torch.Tensor:
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
