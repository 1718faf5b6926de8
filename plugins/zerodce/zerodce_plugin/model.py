"""Zero-DCE as a trainable restorekit model.

DCE-Net (seven 3x3 convolutions with symmetric skip concatenations) predicts ``n_iter``
pixel-wise curve-parameter maps ``A_n`` in [-1, 1]; the light-enhancement curve
``LE(x) = x + A x (1 - x)`` is applied ``n_iter`` times. Training uses only the low-light
input and the non-reference losses of :mod:`zerodce_plugin.losses`: the engine hands
``train_step`` the paired high image too, and Zero-DCE ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from restorekit import StepContext, TrainableModel
from restorekit.engine import TrainConfig
from restorekit.errors import UsageError
from zerodce_plugin.losses import (
    color_constancy_loss,
    exposure_loss,
    illumination_smoothness_loss,
    spatial_consistency_loss,
)


def apply_curves(x: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Apply ``LE(x) = x + a x (1 - x)`` once per 3-channel group of ``curves``.

    ``x`` is ``(N, 3, H, W)`` in [0, 1]; ``curves`` is ``(N, 3 * n, H, W)`` in [-1, 1]. Each
    step maps [0, 1] onto itself monotonically, so the output stays in [0, 1].
    """
    for a in torch.split(curves, 3, dim=1):
        x = x + a * x * (1 - x)
    return x


class DCENet(nn.Module):
    """The curve estimator: 7 conv layers, ``width`` channels, skips 4->5, 3->6, 2->7."""

    def __init__(self, width: int = 32, n_iter: int = 8) -> None:
        super().__init__()
        self.n_iter = n_iter

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, padding=1)

        self.c1, self.c2 = conv(3, width), conv(width, width)
        self.c3, self.c4 = conv(width, width), conv(width, width)
        self.c5, self.c6 = conv(2 * width, width), conv(2 * width, width)
        self.c7 = conv(2 * width, 3 * n_iter)
        # Start from the identity curve (a = 0): training brightens gradually instead of
        # jumping to saturated curves, which matters for short CPU runs.
        nn.init.zeros_(self.c7.weight)
        nn.init.zeros_(self.c7.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The curve maps ``(N, 3 * n_iter, H, W)`` in [-1, 1] for an input in [0, 1]."""
        relu = torch.relu
        x1 = relu(self.c1(x))
        x2 = relu(self.c2(x1))
        x3 = relu(self.c3(x2))
        x4 = relu(self.c4(x3))
        x5 = relu(self.c5(torch.cat([x3, x4], dim=1)))
        x6 = relu(self.c6(torch.cat([x2, x5], dim=1)))
        return torch.tanh(self.c7(torch.cat([x1, x6], dim=1)))


@dataclass
class ZeroDCEOptions(TrainConfig):
    """Zero-DCE options (the paper's defaults) on top of the engine's ``TrainConfig``."""

    width: int = field(default=32, metadata={"help": "channels of DCE-Net's layers",
                                             "range": (1, 1024)})
    n_iter: int = field(default=8, metadata={"help": "curve iterations", "range": (1, 64)})
    scale: int = field(default=1, metadata={"help": "estimate the curves on an input "
                                                    "downsampled by this factor, then "
                                                    "upsample them (Zero-DCE++; 1 = off)",
                                            "range": (1, 64)})
    exposure: float = field(default=0.6, metadata={"help": "well-exposedness level E",
                                                   "range": (0.0, 1.0, "()")})
    patch: int = field(default=16, metadata={"help": "exposure-control patch size",
                                             "range": (1, 1024)})
    w_spa: float = field(default=1.0, metadata={"help": "weight of spatial consistency",
                                                "range": (0.0, 1e6)})
    w_exp: float = field(default=10.0, metadata={"help": "weight of exposure control",
                                                 "range": (0.0, 1e6)})
    w_col: float = field(default=5.0, metadata={"help": "weight of colour constancy",
                                                "range": (0.0, 1e6)})
    w_tv: float = field(default=200.0, metadata={"help": "weight of illumination smoothness",
                                                 "range": (0.0, 1e6)})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate",
                                              "range": (0.0, 1.0, "(]")})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay",
                                                        "range": (0.0, 1.0)})

    def __post_init__(self) -> None:
        super().__post_init__()  # the engine's checks (precision)
        if self.crop_size < self.patch:
            raise UsageError(f"--crop-size ({self.crop_size}) must be at least --patch "
                             f"({self.patch})")


class ZeroDCE(TrainableModel):
    """Zero-Reference Deep Curve Estimation: trained without any ground-truth image."""

    name: ClassVar[str] = "zerodce"
    description: ClassVar[str] = ("Zero-DCE: pixel-wise light-enhancement curves from a tiny "
                                  "CNN, trained with non-reference losses")
    Options: ClassVar[type] = ZeroDCEOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # The paper: 512x512 (resized) images, batch 8, lr 1e-4, 200 epochs.
        "paper": dict(width=32, batch_size=8, crop_size=512, epochs=200, lr=1e-4),
        # The embedded default on 2 CPU cores in about a minute; curves at 1/4 resolution
        # (Zero-DCE++), a moderate lr so the tanh curve maps do not saturate early.
        "quick": dict(width=16, scale=4, batch_size=8, crop_size=128, samples_per_epoch=32,
                      epochs=5, lr=5e-4, eval_every=1, log_every=4, num_samples=2),
    }
    default_preset: ClassVar[str | None] = "paper"
    embedded_preset: ClassVar[str | None] = "quick"

    def build(self, device: torch.device) -> None:
        o = self.options
        self.net = DCENet(o.width, o.n_iter).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    def networks(self) -> dict[str, nn.Module]:
        return {"dce": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"dce": self.opt}

    def curves(self, low: torch.Tensor) -> torch.Tensor:
        """The curve maps for ``low`` at full resolution (estimated at 1/scale)."""
        s = self.options.scale
        if s == 1:
            return self.net(low)
        h, w = low.shape[2:]
        small = F.interpolate(low, size=(max(1, h // s), max(1, w // s)), mode="area")
        return F.interpolate(self.net(small), size=(h, w), mode="bilinear",
                             align_corners=False)

    def losses(self, low: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted non-reference loss terms for a batch of low-light inputs."""
        o = self.options
        curves = self.curves(low)
        out = apply_curves(low, curves)
        return {
            "spa": o.w_spa * spatial_consistency_loss(low, out),
            "exp": o.w_exp * exposure_loss(out, o.exposure, o.patch),
            "col": o.w_col * color_constancy_loss(out),
            "tv": o.w_tv * illumination_smoothness_loss(curves),
        }

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            losses = self.losses(low)  # ``high`` is never used: zero-reference training
        ctx.backward_step(sum(losses.values()), "dce")
        return {k: v.detach().float() for k, v in losses.items()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return apply_curves(low, self.curves(low)).float().clamp(0, 1)
