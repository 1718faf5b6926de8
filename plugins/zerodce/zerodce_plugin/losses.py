"""The four non-reference losses of Zero-DCE (Guo et al., CVPR 2020, section 3.3).

None of them looks at a ground-truth image: they score the enhanced image ``y`` against
the input ``x`` (spatial consistency), against a target exposure level, against the
gray-world assumption (colour constancy), and the curve maps against roughness.
Tensors are ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spatial_consistency_loss(x: torch.Tensor, y: torch.Tensor, region: int = 4) -> torch.Tensor:
    """Keep the contrast between neighbouring regions: ``L_spa``.

    The channel-mean intensities are averaged over ``region`` x ``region`` blocks; for each
    block the differences to its 4 neighbours must stay what they were in the input.
    """
    xi = F.avg_pool2d(x.mean(dim=1, keepdim=True), region)
    yi = F.avg_pool2d(y.mean(dim=1, keepdim=True), region)
    loss = x.new_zeros(())
    for dim in (2, 3):  # vertical and horizontal neighbours (each pair counted twice)
        dx = (xi.diff(dim=dim)).abs()
        dy = (yi.diff(dim=dim)).abs()
        loss = loss + 2 * ((dy - dx) ** 2).sum(dim=(1, 2, 3))
    return (loss / (xi.shape[2] * xi.shape[3])).mean()


def exposure_loss(y: torch.Tensor, level: float = 0.6, patch: int = 16) -> torch.Tensor:
    """Pull the mean intensity of every ``patch`` x ``patch`` block towards ``level``: ``L_exp``."""
    means = F.avg_pool2d(y.mean(dim=1, keepdim=True), patch)
    return (means - level).abs().mean()


def color_constancy_loss(y: torch.Tensor) -> torch.Tensor:
    """Gray-world assumption: the channel means should agree, ``L_col``."""
    r, g, b = y.mean(dim=(2, 3)).unbind(dim=1)
    return ((r - g) ** 2 + (r - b) ** 2 + (g - b) ** 2).mean()


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Total variation of the curve-parameter maps ``(N, 3 * n, H, W)``: ``L_tvA``."""
    dh = curves.diff(dim=2)
    dw = curves.diff(dim=3)
    return (dh ** 2).mean() + (dw ** 2).mean()
