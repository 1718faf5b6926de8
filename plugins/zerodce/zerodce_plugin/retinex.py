"""Multi-scale Retinex with colour restoration, a light version of MSRCR.

Jobson, Rahman & Woodell (1997): the reflectance at one scale is
``log(I) - log(G_sigma * I)``; MSR averages three scales; colour restoration multiplies
by ``beta * (log(alpha * I_c) - log(sum_c I_c))``; the result is stretched to [0, 1]
between its ``clip`` and ``1 - clip`` quantiles ("simplest colour balance").
Large Gaussian blurs run on a downsampled copy, so a 512 px image takes milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from restorekit import Image

DEFAULTS: dict[str, Any] = {"sigma": 80.0, "clip": 0.01, "color": True, "mix": 1.0}
"""``sigma``: middle scale (the others are sigma/5 and 3*sigma); ``clip``: fraction clipped
at each end by the final stretch; ``color``: colour restoration on/off; ``mix``: blend
of the Retinex output with the input (1 = Retinex only)."""

_EPS = 1.0 / 255.0


def blur(channel: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D array; large sigmas are computed at a lower resolution."""
    factor = max(1, int(sigma // 4))
    if factor == 1:
        return ndimage.gaussian_filter(channel, sigma, mode="reflect")
    h, w = channel.shape
    small = ndimage.zoom(channel, 1.0 / factor, order=1, grid_mode=True, mode="reflect")
    small = ndimage.gaussian_filter(small, sigma / factor, mode="reflect")
    zoom = (h / small.shape[0], w / small.shape[1])
    big = ndimage.zoom(small, zoom, order=1, grid_mode=True, mode="reflect")
    return big[:h, :w]


def retinex(image: Image, sigma: float = 80.0, clip: float = 0.01, color: bool = True,
            mix: float = 1.0) -> Image:
    """MSRCR-lite of a float32 RGB image in [0, 1]; returns an image of the same shape."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 (got {sigma})")
    if not 0 <= clip < 0.5:
        raise ValueError(f"clip must be in [0, 0.5) (got {clip})")
    if not 0 <= mix <= 1:
        raise ValueError(f"mix must be in [0, 1] (got {mix})")
    img = np.asarray(image, dtype=np.float64) + _EPS
    log_img = np.log(img)
    msr = np.zeros_like(img)
    scales = (sigma / 5.0, sigma, sigma * 3.0)
    for s in scales:
        for c in range(img.shape[2]):
            msr[..., c] += log_img[..., c] - np.log(blur(img[..., c], s))
    msr /= len(scales)
    if color:
        alpha, beta = 125.0, 46.0
        msr *= beta * (np.log(alpha * img) - np.log(img.sum(axis=2, keepdims=True)))
    lo, hi = np.quantile(msr, [clip, 1.0 - clip])
    out = np.clip((msr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    out = mix * out + (1.0 - mix) * np.asarray(image, dtype=np.float64)
    return out.astype(np.float32)
