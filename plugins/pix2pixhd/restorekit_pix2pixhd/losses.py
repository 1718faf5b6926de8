"""pix2pixHD losses (Wang et al., CVPR 2018, Sec. 3.2 and 4).

- :class:`GANLoss`: the least-squares adversarial loss (LSGAN, Mao et al. 2017), summed
  over the discriminator scales.
- :func:`feature_matching_loss`: the discriminator feature-matching loss (Eq. 4).
- :class:`VGGLoss`: the VGG19 perceptual loss (Sec. 4, "with perceptual loss"), with the
  layer weights of NVIDIA's implementation.

The VGG19 weights are read from a local file only (:func:`load_vgg19`); nothing is
ever downloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from restorekit.errors import CheckpointError

__all__ = [
    "VGG19",
    "GANLoss",
    "VGGLoss",
    "feature_matching_loss",
    "load_vgg19",
]

Prediction = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]]


class GANLoss(nn.Module):
    """LSGAN loss: mean squared error of the patch scores to 1.0 (real) or 0.0 (fake).

    ``pred`` is what :class:`MultiscaleDiscriminator` returns (one feature list per scale;
    the last feature of each is the score map) and the per-scale losses are summed. A
    single feature list, or a bare score tensor, is accepted too.
    """

    def __init__(self, target_real_label: float = 1.0, target_fake_label: float = 0.0) -> None:
        super().__init__()
        self.real_label = target_real_label
        self.fake_label = target_fake_label

    def _one(self, scores: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = self.real_label if target_is_real else self.fake_label
        return F.mse_loss(scores, torch.full_like(scores, target))

    def forward(self, pred: Prediction, target_is_real: bool) -> torch.Tensor:
        if isinstance(pred, torch.Tensor):
            return self._one(pred, target_is_real)
        if isinstance(pred[0], torch.Tensor):  # one scale: a list of features
            return self._one(pred[-1], target_is_real)
        loss = pred[0][-1].new_zeros(())
        for scale in pred:
            loss = loss + self._one(scale[-1], target_is_real)
        return loss


def feature_matching_loss(
    pred_fake: Sequence[Sequence[torch.Tensor]],
    pred_real: Sequence[Sequence[torch.Tensor]],
    n_layers: int,
    num_D: int,
    lambda_feat: float = 10.0,
) -> torch.Tensor:
    """Discriminator feature-matching loss (Eq. 4).

    L1 between every intermediate feature (all but the score map) of each scale for the
    fake and the real (detached) input, weighted by
    ``(4 / (n_layers + 1)) * (1 / num_D) * lambda_feat`` as in NVIDIA's implementation.
    """
    feat_weight = 4.0 / (n_layers + 1)
    d_weight = 1.0 / num_D
    loss = pred_fake[0][0].new_zeros(())
    for fake_scale, real_scale in zip(pred_fake, pred_real, strict=True):
        for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            loss = loss + d_weight * feat_weight * F.l1_loss(fake, real.detach()) * lambda_feat
    return loss


# torchvision's vgg19().features configuration: conv widths, "M" = 2x2 max-pool.
_VGG19_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]  # fmt: skip
# Ends (exclusive) of NVIDIA's five slices: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_SLICE_ENDS = (2, 7, 12, 21, 30)


def _vgg19_layers(count: int) -> list[nn.Module]:
    """The first ``count`` layers of torchvision's ``vgg19().features`` (37 in all)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(True)]
            in_ch = int(v)
    return layers[:count]


def _vgg19_conv_indices() -> list[int]:
    """Indices of the conv layers in torchvision's ``vgg19().features``."""
    indices, i = [], 0
    for v in _VGG19_CFG:
        if v != "M":
            indices.append(i)
        i += 1 if v == "M" else 2
    return indices


class VGG19(nn.Module):
    """VGG19 convolutional features (Simonyan & Zisserman 2015), up to relu5_1.

    ``self.features`` uses torchvision's ``vgg19().features`` indexing (conv ``N`` has
    keys ``features.N.weight`` / ``features.N.bias``), truncated after index 29 (relu5_1),
    the deepest layer the perceptual loss uses. ``forward`` returns the five activations
    relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (NVIDIA's ``Vgg19`` slices). Inputs are
    ImageNet-normalised RGB; parameters are frozen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_vgg19_layers(_SLICE_ENDS[-1]))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        start = 0
        for end in _SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            out.append(x)
            start = end
        return out


_KEY = re.compile(r"^(?:features\.)?(\d+)\.(weight|bias)$")


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"VGG19 weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle refused by weights_only, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read VGG19 weights from {path}: {reason}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict of VGG19 weights")
    return state


def load_vgg19(path: str | os.PathLike[str]) -> VGG19:
    """Build a :class:`VGG19` and load its weights from a local file.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else
    with ``torch.load(..., weights_only=True)``. Keys may be torchvision's
    (``features.N.weight``, ``classifier.*`` ignored, layers past relu5_1 ignored) or
    bare (``N.weight``). Raises :class:`~restorekit.errors.CheckpointError` when the file
    is missing, unreadable, or its keys or shapes do not fit.
    """
    path = Path(path)
    state = _read_state_dict(path)
    vgg = VGG19()
    expected = vgg.features.state_dict()
    # Conv layers of the full vgg19().features that come after relu5_1: allowed, ignored.
    deeper = {str(i) for i in _vgg19_conv_indices() if i >= len(vgg.features)}
    picked: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        m = _KEY.match(key)
        if key.startswith("classifier.") or (m is not None and m.group(1) in deeper):
            continue
        name = f"{m.group(1)}.{m.group(2)}" if m is not None else key
        if name in expected:
            picked[name] = value
        else:
            unexpected.append(key)
    missing = [k for k in expected if k not in picked]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + _short(missing))
        if unexpected:
            parts.append("unexpected " + _short(unexpected))
        raise CheckpointError(f"{path} is not a VGG19 features state dict: {'; '.join(parts)}")
    wrong = [
        f"{k} {tuple(getattr(v, 'shape', ()))} != {tuple(expected[k].shape)}"
        for k, v in picked.items()
        if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path} does not fit VGG19: shape mismatch {_short(wrong)}")
    vgg.features.load_state_dict(picked)
    return vgg.eval()


def _short(items: Sequence[str], limit: int = 3) -> str:
    items = [s.strip() for s in items if s.strip()]
    text = ", ".join(items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


class VGGLoss(nn.Module):
    """VGG19 perceptual loss: ``sum_i w_i * L1(phi_i(x), phi_i(y).detach())``.

    ``phi_i`` are relu1_1 .. relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1 (NVIDIA's).
    Inputs ``x`` (generated) and ``y`` (target) are ``(N, 3, H, W)`` RGB in ``[-1, 1]``
    (the generator's Tanh range); they are mapped to ``[0, 1]`` and ImageNet-normalised
    before VGG19. The weights come from the local file ``weights_path`` (see
    :func:`load_vgg19`); the VGG parameters are frozen.
    """

    weights = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

    def __init__(self, weights_path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.vgg = load_vgg19(weights_path)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[-1, 1]`` RGB to ImageNet-normalised input."""
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_feats = self.vgg(self.normalize(x))
        y_feats = self.vgg(self.normalize(y))
        loss = x.new_zeros(())
        for w, fx, fy in zip(self.weights, x_feats, y_feats, strict=True):
            loss = loss + w * F.l1_loss(fx, fy.detach())
        return loss
