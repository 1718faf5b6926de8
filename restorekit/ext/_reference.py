"""Plain PyTorch versions of the fused ops: the fallback and the tests' reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reflection_pad(x: torch.Tensor) -> torch.Tensor:
    """Reflection padding by 1 on H and W."""
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def instance_norm_relu_pad(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False) -> ReLU -> ReflectionPad2d(1)."""
    return reflection_pad(torch.relu(F.instance_norm(x, eps=eps)))


def instance_norm_add(x: torch.Tensor, residual: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False)(x) + residual."""
    return residual + F.instance_norm(x, eps=eps)


def resnet_block(x: torch.Tensor, conv1: nn.Conv2d, conv2: nn.Conv2d, eps: float = 1e-5):
    """The Pix2PixHD ResnetBlock forward, written with functional ops."""
    h = F.conv2d(reflection_pad(x), conv1.weight, conv1.bias)
    h = F.conv2d(instance_norm_relu_pad(h, eps), conv2.weight, conv2.bias)
    return instance_norm_add(h, x, eps)
