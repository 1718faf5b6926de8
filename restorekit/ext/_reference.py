"""Plain PyTorch versions of the fused ops: the fallback and the tests' reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reflection_pad(x: torch.Tensor) -> torch.Tensor:
    """Reflection padding by 1 on H and W."""
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def activation(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """``x if x >= 0 else negative_slope * x``: ReLU for 0, nothing for 1, else LeakyReLU."""
    if negative_slope == 0.0:
        return torch.relu(x)
    if negative_slope == 1.0:
        return x
    return F.leaky_relu(x, negative_slope)


def instance_norm_act(
    x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0, pad: int = 0
) -> torch.Tensor:
    """InstanceNorm2d(affine=False) -> activation -> ReflectionPad2d(pad)."""
    y = activation(F.instance_norm(x, eps=eps), negative_slope)
    return F.pad(y, (pad, pad, pad, pad), mode="reflect") if pad else y


def instance_norm_relu_pad(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False) -> ReLU -> ReflectionPad2d(1)."""
    return instance_norm_act(x, eps, 0.0, 1)


def instance_norm_add(x: torch.Tensor, residual: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False)(x) + residual."""
    return residual + F.instance_norm(x, eps=eps)


def resnet_block(x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d, eps: float = 1e-5):
    """The Pix2PixHD ResnetBlock forward, written with functional ops."""
    h = F.conv2d(reflection_pad(x), conv1.weight, conv1.bias)
    h = F.conv2d(instance_norm_relu_pad(h, eps), conv2.weight, conv2.bias)
    return instance_norm_add(h, x, eps)
