"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) from a local weights file; nothing is downloaded.

The network is written here in plain torch with the parameter names of torchvision's
``alexnet().features`` (``features.N.weight``/``bias``) and of the ``lpips`` package's linear
heads (``lin0.model.1.weight`` ... ``lin4``), so one safetensors file holding both state dicts
loads as is; ``scripts/make_lpips_weights.py`` writes it from the official weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from restorekit.api import Image, Metric
from restorekit.errors import DataError

CHANNELS = (64, 192, 384, 256, 256)
"""Channels of the five AlexNet ReLU outputs LPIPS compares (relu1 ... relu5)."""
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
"""LPIPS's ScalingLayer: inputs in [-1, 1] become ``(x - SHIFT) / SCALE`` per channel."""
_CUTS = (2, 5, 8, 10, 12)
"""``features[previous cut:cut]`` ends at relu1 ... relu5."""


class _Linear(nn.Module):
    """LPIPS's NetLinLayer: dropout, then a 1x1 convolution to one channel (no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet features: the learned perceptual distance of two images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(  # torchvision's AlexNet features, same indices
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
        )
        for i, channels in enumerate(CHANNELS):
            self.add_module(f"lin{i}", _Linear(channels))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for cut in _CUTS:
            for layer in self.features[start:cut]:
                x = layer(x)
            start = cut
            out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The distance of each pair of ``(N, 3, H, W)`` batches in [0, 1]: shape ``(N,)``."""
        feats_a = self._layers(((a * 2 - 1) - self.shift) / self.scale)
        feats_b = self._layers(((b * 2 - 1) - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device)
        for i, (fa, fb) in enumerate(zip(feats_a, feats_b, strict=True)):
            lin = getattr(self, f"lin{i}")
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total


def load_lpips(path: Path) -> LPIPS:
    """An :class:`LPIPS` with the weights of the safetensors file ``path``; a ``DataError``
    naming the file and what is wrong when it is missing, unreadable, or its tensors do not
    match the network (a missing, unexpected or misshapen key)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(f"{path}: no such LPIPS weights file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: not a readable safetensors file ({reason}); see "
                        f"docs/metrics.md for how to make it") from None
    net = LPIPS()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = (f"lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")
                if missing else f"has unexpected {', '.join(unexpected[:3])}")
        raise DataError(f"{path}: not LPIPS v0.1 AlexNet weights: it {what}")
    for key, tensor in expected.items():
        if tensors[key].shape != tensor.shape:
            raise DataError(f"{path}: tensor {key!r} is {tuple(tensors[key].shape)}, LPIPS "
                            f"AlexNet needs {tuple(tensor.shape)}")
        if not torch.isfinite(tensors[key]).all():
            raise DataError(f"{path}: tensor {key!r} holds inf or NaN")
    net.load_state_dict(tensors)
    return net


def lpips_metric(path: Path) -> Metric:
    """The full-reference ``lpips`` metric with the weights of ``path`` (on the CPU)."""
    net = load_lpips(path)

    def distance(prediction: Image, target: Image) -> float:
        if prediction.shape != target.shape:
            raise ValueError(f"images differ in shape: prediction {prediction.shape}, "
                             f"target {target.shape}")
        a, b = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                .permute(2, 0, 1).unsqueeze(0) for x in (prediction, target))
        with torch.no_grad():
            return float(net(a, b)[0])

    return Metric("lpips", distance, higher_is_better=False, min_size=32,
                  description=f"LPIPS v0.1 AlexNet perceptual distance (weights {path})")
