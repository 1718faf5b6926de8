"""Built-in preprocessors: classic image -> image transforms from scikit-image.

Every function takes an image (float32 ``(H, W, 3)`` in [0, 1]) and keyword
parameters, and returns a new float32 image in [0, 1]; the input is never modified.
Contrast operations (``clahe``, ``histeq``) work on the V channel of HSV, so hue and
saturation are kept and colours do not shift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from restorekit.api import Choice, FloatRange, Image, Preprocessor, SearchRange
from restorekit.errors import UsageError
from restorekit.hookspecs import hookimpl

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 weights


def _out(image: np.ndarray) -> Image:
    return np.clip(np.asarray(image, dtype=np.float32), 0, 1)


def _luminance(image: Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) @ _LUMA


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def gamma(image: Image, gamma: float = 2.2) -> Image:
    """``out = in ** (1 / gamma)``; gamma > 1 brightens."""
    _require(gamma > 0, f"gamma: gamma must be > 0 (got {gamma})")
    return _out(np.power(np.clip(image, 0, 1), 1.0 / gamma))


def autogamma_exponent(image: Image, target: float = 0.45) -> float:
    """The exponent p <= 1 for which the mean luminance of ``image ** p`` is ``target``.

    Found by bisection; 1.0 for images already at least as bright as ``target``.
    """
    lum = np.clip(_luminance(image), 0, 1)
    if lum.size > 65536:  # a subsample is plenty to pick one number
        lum = lum.reshape(-1)[:: lum.size // 65536 + 1]
    if lum.mean() >= target or lum.max() <= 0:
        return 1.0
    lo, hi = 1e-3, 1.0  # mean(lum ** p) decreases with p
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if np.power(lum, mid).mean() > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def autogamma(image: Image, target: float = 0.45) -> Image:
    """Brighten with the gamma that brings the mean luminance to ``target``.

    Images already brighter than ``target`` and all-black images are returned unchanged.
    """
    _require(0 < target < 1, f"autogamma: target must be in (0, 1) (got {target})")
    p = autogamma_exponent(image, target)
    if p == 1.0:
        return _out(np.array(image, dtype=np.float32, copy=True))
    return _out(np.power(np.clip(image, 0, 1), p))


def _on_value(image: Image, fn: Callable[[np.ndarray], np.ndarray]) -> Image:
    """Apply ``fn`` to the V channel of HSV (keeps hue and saturation)."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(image, 0, 1))
    hsv[..., 2] = np.clip(fn(hsv[..., 2]), 0, 1)
    return _out(hsv2rgb(hsv))


def clahe(image: Image, clip: float = 0.01, kernel: int = 0) -> Image:
    """Contrast-limited adaptive histogram equalisation of the V (HSV) channel.

    ``kernel`` is the tile size in pixels (0: 1/8 of the image's height and width).
    """
    from skimage.exposure import equalize_adapthist

    _require(clip > 0, f"clahe: clip must be > 0 (got {clip})")
    _require(kernel >= 0, f"clahe: kernel must be >= 0 (got {kernel})")
    kernel_size = kernel if kernel > 0 else None
    return _on_value(image, lambda v: equalize_adapthist(v, kernel_size=kernel_size,
                                                         clip_limit=clip))


def histeq(image: Image, bins: int = 256) -> Image:
    """Global histogram equalisation of the V (HSV) channel."""
    from skimage.exposure import equalize_hist

    _require(bins >= 2, f"histeq: bins must be >= 2 (got {bins})")

    def eq(v: np.ndarray) -> np.ndarray:
        if v.max() <= v.min():
            return v
        return equalize_hist(v, nbins=bins)

    return _on_value(image, eq)


DENOISE_METHODS = ("tv", "bilateral", "nlm")


def noise_sigma(image: Image) -> float:
    """Estimated standard deviation of Gaussian-like noise, averaged over channels.

    The median absolute diagonal Haar detail coefficient divided by 0.6745 (Donoho's
    robust estimator, as in ``skimage.restoration.estimate_sigma``, without PyWavelets).
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    if h == 0 or w == 0:
        return 0.0
    a, b = img[0:h:2, 0:w:2], img[0:h:2, 1:w:2]
    c, d = img[1:h:2, 0:w:2], img[1:h:2, 1:w:2]
    detail = (a - b - c + d) / 2
    return float(np.mean(np.median(np.abs(detail).reshape(-1, img.shape[-1]), axis=0)) / 0.6745)


def denoise(image: Image, method: str = "tv", strength: float = 1.0) -> Image:
    """Remove noise, with a strength that follows the noise level estimated in the image.

    ``method``: "tv" (total variation, Chambolle; fast), "bilateral" or "nlm"
    (non-local means; slowest). ``strength`` scales the estimated noise sigma into
    the method's parameter (0 returns the image unchanged).
    """
    from skimage.restoration import denoise_bilateral, denoise_nl_means, denoise_tv_chambolle

    _require(method in DENOISE_METHODS,
             f"denoise: method must be one of {', '.join(DENOISE_METHODS)} (got {method!r})")
    _require(strength >= 0, f"denoise: strength must be >= 0 (got {strength})")
    img = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    sigma = noise_sigma(img)
    if strength == 0 or sigma <= 0:
        return img.copy()
    if method == "tv":
        out = denoise_tv_chambolle(img, weight=2.0 * strength * sigma, channel_axis=2)
    elif method == "bilateral":
        out = denoise_bilateral(img, sigma_color=1.5 * strength * sigma, sigma_spatial=2.0,
                                mode="reflect",
                                channel_axis=2)
    else:
        out = denoise_nl_means(img, h=0.8 * strength * sigma, sigma=sigma, patch_size=5,
                               patch_distance=6, fast_mode=True, channel_axis=2)
    return _out(out)


def whitebalance(image: Image) -> Image:
    """Gray-world white balance: scale the channels to a common mean."""
    img = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    means = img.reshape(-1, 3).mean(axis=0)
    if means.min() <= 1e-6:
        return img.copy()
    return _out(img * (means.mean() / means))


def unsharp(image: Image, radius: float = 1.0, amount: float = 0.5) -> Image:
    """Unsharp masking: add ``amount`` times the detail finer than ``radius`` (pixels)."""
    from skimage.filters import unsharp_mask

    _require(radius > 0, f"unsharp: radius must be > 0 (got {radius})")
    # channel_axis=2, not -1: scikit-image 0.26's unsharp_mask mis-slices a negative axis.
    return _out(unsharp_mask(np.clip(image, 0, 1), radius=radius, amount=amount,
                             channel_axis=2))


BUILTINS: tuple[tuple[str, Callable[..., Image], dict[str, Any], str], ...] = (
    ("gamma", gamma, {"gamma": 2.2}, "power-law brightening: in ** (1/gamma)"),
    ("autogamma", autogamma, {"target": 0.45},
     "gamma chosen so the mean luminance becomes target (dark images only)"),
    ("clahe", clahe, {"clip": 0.01, "kernel": 0},
     "adaptive histogram equalisation (CLAHE) of the HSV value channel"),
    ("histeq", histeq, {"bins": 256}, "global histogram equalisation of the HSV value channel"),
    ("denoise", denoise, {"method": "tv", "strength": 1.0},
     "noise removal (tv | bilateral | nlm) scaled to the estimated noise level"),
    ("whitebalance", whitebalance, {}, "gray-world white balance"),
    ("unsharp", unsharp, {"radius": 1.0, "amount": 0.5}, "unsharp-mask sharpening"),
)

SEARCH: dict[str, dict[str, SearchRange]] = {
    "gamma": {"gamma": FloatRange(1.2, 3.5)},
    "autogamma": {"target": FloatRange(0.3, 0.6)},
    "clahe": {"clip": FloatRange(0.003, 0.05, log=True)},
    "denoise": {"method": Choice(*DENOISE_METHODS), "strength": FloatRange(0.25, 2.0)},
    "unsharp": {"radius": FloatRange(0.5, 3.0), "amount": FloatRange(0.1, 1.5)},
}
"""Where ``restorekit tune`` searches each built-in's parameters (the others keep defaults)."""


RANGES: dict[str, dict[str, tuple[Any, ...]]] = {
    "gamma": {"gamma": (0.0, 100.0, "(]")},
    "autogamma": {"target": (0.0, 1.0, "()")},
    "clahe": {"clip": (0.0, 1.0, "(]"), "kernel": (0, 4096)},
    "histeq": {"bins": (2, 65536)},
    "denoise": {"strength": (0.0, 100.0)},
    "unsharp": {"radius": (0.0, 100.0, "(]"), "amount": (0.0, 100.0)},
}
"""Allowed parameter ranges (``Preprocessor.ranges``), checked when a spec is parsed."""


@hookimpl
def register_preprocessors(register: Callable[..., Any]) -> None:
    """Register the built-in preprocessors."""
    for name, fn, params, description in BUILTINS:
        register(Preprocessor(name, fn, params=dict(params), description=description,
                              ranges=RANGES.get(name, {}),
                              search=dict(SEARCH.get(name, {}))))
