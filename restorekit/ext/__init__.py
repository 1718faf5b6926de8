"""Fused C++/CUDA kernels for instance-normalised networks (Pix2PixHD's, first of all).

The first use of an op builds (first time, cached afterwards) and loads the extension in
``csrc/`` unless ``RESTOREKIT_EXT=off``; importing this module builds nothing.
The ops then live under ``torch.ops.restorekit``:

* ``reflection_pad(x)`` / ``reflection_pad_backward(g)``
* ``instance_norm_act(x, eps, negative_slope, pad)``: InstanceNorm -> ReLU / LeakyReLU / no
  activation -> ReflectionPad(pad) in one pass
* ``instance_norm_add(x, residual, eps)``: InstanceNorm(x) + residual in one pass

:func:`resnet_block` runs a whole Pix2PixHD residual block through them, and
:func:`fuse_instance_norms` swaps every ``InstanceNorm2d -> activation [-> ReflectionPad2d]``
run of a network for :class:`InstanceNormAct` (same ``state_dict``).

``RESTOREKIT_EXT`` selects: ``auto`` (default: the extension if it builds, else plain PyTorch
with one warning), ``on`` (a failed build raises :class:`ExtensionBuildError` carrying the
compiler's output on first use) or ``off`` (plain PyTorch). Importing never raises.

Every op takes float32, float64, float16 and bfloat16 on CPU and CUDA (reduced precision is
stored as such and accumulated in float32). Under ``torch.autocast`` the fused block runs its
convolutions and fused ops in the autocast dtype, so no instance norm pays extra casts.

Sizes beyond the kernels' limits (more than ``2**31 - 65537`` elements per padded plane, or
more than ``2**31 - 1`` planes) and ops whose outputs and scratch the available memory cannot
hold raise :class:`ExtensionSizeError` (a ``RuntimeError``; one line) before any work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from restorekit.ext import _build, _ops, _reference
from restorekit.ext._build import (
    ExtensionBuildError,
    ExtensionError,
    cache_root,
    mode,
    source_dir,
)
from restorekit.ext._ops import ExtensionSizeError
from restorekit.ext.modules import InstanceNormAct, fuse_instance_norms

__all__ = [
    "ExtensionBuildError",
    "ExtensionError",
    "ExtensionSizeError",
    "InstanceNormAct",
    "describe",
    "fuse_instance_norms",
    "instance_norm_act",
    "instance_norm_add",
    "instance_norm_relu_pad",
    "is_available",
    "load",
    "mode",
    "reflection_pad",
    "resnet_block",
    "status",
]

_warned = False


def load() -> bool:
    """Build/load the extension as ``RESTOREKIT_EXT`` says; True when its ops can be used.

    ``off``: False without building. ``auto``: False (after one warning) if the build fails.
    ``on``: raises :class:`ExtensionBuildError` if the build fails.
    """
    global _warned
    m = mode()
    if m == "off":
        return False
    st = _build.state()
    if not st.attempted:  # no lock on the fast path (torch.compile traces through this)
        st = _build.ensure()
    if st.ok:
        return True
    if m == "on":
        st.raise_error()
    if not _warned:
        _warned = True
        _build.warn_fallback(st)
    return False


def is_available() -> bool:
    """Whether the compiled ops are loaded (never builds, never raises)."""
    st = _build.state()
    return st.attempted and st.ok


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _supported(x: torch.Tensor, pad: int = 1) -> bool:
    """Whether the kernels cover ``x`` (NCHW, a supported dtype, planes larger than ``pad``)."""
    if x.dim() != 4 or x.dtype not in _DTYPES or not pad < min(x.shape[2], x.shape[3]):
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and "cuda" in _build.state().devices


def _use_ext(x: torch.Tensor, pad: int = 1) -> bool:
    return load() and _supported(x, pad)


def reflection_pad(x: torch.Tensor) -> torch.Tensor:
    """Reflection padding by 1 on H and W (extension op, or plain PyTorch as a fallback)."""
    if _use_ext(x):
        _ops.check_reflection_pad(x)
        return torch.ops.restorekit.reflection_pad(x)
    return _reference.reflection_pad(x)


def instance_norm_act(
    x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0, pad: int = 0
) -> torch.Tensor:
    """InstanceNorm2d(affine=False) -> activation -> ReflectionPad2d(pad), fused when available.

    The activation is ``v if v >= 0 else negative_slope * v``: ``negative_slope`` 0 is ReLU,
    1 is no activation, anything else LeakyReLU.
    """
    if _use_ext(x, pad):
        _ops.check_instance_norm_act(x, pad)
        return torch.ops.restorekit.instance_norm_act(x, eps, negative_slope, pad)
    return _reference.instance_norm_act(x, eps, negative_slope, pad)


def instance_norm_relu_pad(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False) -> ReLU -> ReflectionPad2d(1), fused when available."""
    return instance_norm_act(x, eps, 0.0, 1)


def instance_norm_add(x: torch.Tensor, residual: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False)(x) + residual, fused when available."""
    if _use_ext(x) and residual.shape == x.shape and residual.dtype == x.dtype:
        _ops.check_instance_norm_add(x, residual)
        return torch.ops.restorekit.instance_norm_add(x, residual, eps)
    return _reference.instance_norm_add(x, residual, eps)


def resnet_block(
    x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d, eps: float = 1e-5
) -> torch.Tensor:
    """Pix2PixHD ResnetBlock forward: ``x + IN(conv2(pad(relu(IN(conv1(pad(x)))))))``.

    ``conv1``/``conv2`` are the block's 3x3 convolutions (padding 0); their weight and bias
    are used with ``torch.nn.functional.conv2d``. Falls back to plain PyTorch as
    ``RESTOREKIT_EXT`` says, or for inputs the kernels do not cover.
    """
    if not _use_ext(x):
        return _reference.resnet_block(x, conv1, conv2, eps)
    _ops.check_sizes("resnet_block", x, 1)  # the planes of every fused op in the block
    params = (conv1.weight, conv1.bias, conv2.weight, conv2.bias)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # One explicit cast of the input and the weights (differentiable: their gradients come
        # back in float32), then the whole block in the autocast dtype with autocast off, so
        # that forward and backward see the same dtypes.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            cast = [None if p is None else p.to(dtype) for p in params]
            return _FusedBlockFunction.apply(x.to(dtype), *cast, eps)
    return _FusedBlockFunction.apply(x, *params, eps)


def _conv_backward(
    grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, has_bias: bool, mask: list
) -> tuple:
    return torch.ops.aten.convolution_backward(
        grad, inp, weight, [weight.shape[0]] if has_bias else None,
        [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask,
    )  # fmt: skip


class _FusedBlockFunction(torch.autograd.Function):
    """The block's forward through the fused ops, and one hand-written backward.

    Same saved tensors as op-by-op autograd, but the input's two gradients (through the
    residual and through the first convolution) are summed inside the reflection-pad gather
    (``reflection_pad_backward_add``) instead of in a separate pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        ops = torch.ops.restorekit
        xp = ops.reflection_pad(x)
        h1 = torch.nn.functional.conv2d(xp, w1, b1)
        a, m1, s1 = ops.instance_norm_act_with_stats(h1, eps, 0.0, 1)
        h2 = torch.nn.functional.conv2d(a, w2, b2)
        y, m2, s2 = ops.instance_norm_add_with_stats(h2, x, eps)
        ctx.save_for_backward(xp, w1, h1, m1, s1, a, w2, h2, m2, s2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        ops = torch.ops.restorekit
        xp, w1, h1, m1, s1, a, w2, h2, m2, s2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        grad = grad.contiguous()
        dh2 = ops.instance_norm_add_backward(grad, h2, m2, s2)
        da, dw2, db2 = _conv_backward(dh2, a, w2, ctx.has_bias[1], [True, need_w2, need_b2])
        dx = dw1 = db1 = None
        if need_x or need_w1 or need_b1:
            dh1 = ops.instance_norm_act_backward(da, h1, m1, s1, 0.0, 1)
            dxp, dw1, db1 = _conv_backward(dh1, xp, w1, ctx.has_bias[0], [need_x, need_w1, need_b1])
            if need_x:
                dx = ops.reflection_pad_backward_add(dxp, grad)
        return dx, dw1, db1, dw2, db2, None


def status() -> dict[str, Any]:
    """Machine-readable state of the extension (builds first unless RESTOREKIT_EXT=off)."""
    try:
        m = mode()
    except ExtensionError as exc:
        return {"mode": None, "error": str(exc), "built": False}
    st = _build.state()
    if m != "off" and not st.attempted:
        st = _build.ensure()
    return {
        "mode": m,
        "attempted": st.attempted,
        "built": st.ok,
        "devices": list(st.devices) if st.ok else [],
        "from_cache": st.from_cache,
        "seconds": round(st.seconds, 3),
        "sources": str(source_dir()),
        "cache_root": str(cache_root()),
        "cache_dir": str(st.cache_dir) if st.cache_dir else None,
        "library": str(st.library) if st.ok and st.library else None,
        "error": st.error,
        "log_path": str(st.log_path) if st.log_path else None,
        "log": st.log or None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }


def describe() -> str:
    """Human-readable report for ``restorekit ext``."""
    s = status()
    if s["mode"] is None:
        return f"restorekit extension: {s['error']}"
    if s["mode"] == "off":
        head = "disabled (RESTOREKIT_EXT=off): plain PyTorch ops are used"
    elif s["built"]:
        how = "loaded from cache" if s["from_cache"] else f"built in {s['seconds']:.1f}s"
        head = f"built for {', '.join(s['devices'])} ({how})"
    else:
        fallback = "errors on use" if s["mode"] == "on" else "falling back to plain PyTorch"
        head = f"NOT built, {fallback}: {s['error']}"
    lines = [
        f"restorekit extension: {head}",
        f"  mode:    RESTOREKIT_EXT={s['mode']}",
        f"  sources: {s['sources']}",
        f"  cache:   {s['cache_dir'] or s['cache_root']}",
    ]
    if s["library"]:
        lines.append(f"  library: {s['library']}")
    cuda = s["torch_cuda"] or "none"
    lines.append(f"  torch:   {s['torch']} (CUDA {cuda}, GPU available: {s['cuda_available']})")
    if s["log"]:
        if s["log_path"]:
            lines.append(f"  build log: {s['log_path']}")
        tail = s["log"].strip().splitlines()[-40:]
        lines += ["  --- build log (last lines) ---", *("  " + ln for ln in tail)]
    return "\n".join(lines)
