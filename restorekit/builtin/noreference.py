"""Built-in no-reference metrics: the lightness-order error and the simple statistics an
engineer reads (mean brightness, estimated noise, colourfulness), and NIQE from a local
parameter file.

Each scores one image, float RGB in [0, 1], with no ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from restorekit.api import Image, NoReferenceMetric
from restorekit.builtin.metrics import REC601
from restorekit.errors import DataError
from restorekit.hookspecs import hookimpl

LOE_SIDE = 50
"""LOE compares lightness orders on a grid subsampled so the short side has ~50 pixels."""


def loe(prediction: Image, source: Image) -> float:
    """Lightness-order error (Wang et al. 2013, "Naturalness preserved enhancement").

    Lightness ``L = max(R, G, B)`` on the 8-bit scale (rounded, as the authors' code). For
    every pixel ``x``, count the pixels ``y`` whose order ``L(x) >= L(y)`` differs between
    the input ``source`` and the enhanced ``prediction``; LOE is the mean count. Both maps
    are subsampled every ``min(H, W) // 50`` pixels first (the paper's down-sampling to a
    short side of 50). 0 = every lightness order of the input kept (any increasing tone
    curve); higher = more orders flipped (halos, unnatural local contrast).
    """
    pred = np.asarray(prediction, dtype=np.float64)
    src = np.asarray(source, dtype=np.float64)
    if pred.shape != src.shape:
        raise ValueError(f"output {pred.shape} and input {src.shape} differ in shape")
    step = max(1, min(src.shape[:2]) // LOE_SIDE)
    grid = (slice(step - 1, None, step), slice(step - 1, None, step))
    light_src = np.round(src.max(axis=2)[grid] * 255).ravel()
    light_pred = np.round(pred.max(axis=2)[grid] * 255).ravel()
    flipped = 0
    for start in range(0, light_src.size, 1024):  # rows of the pairwise table, in chunks
        rows = slice(start, start + 1024)
        order_src = light_src[rows, None] >= light_src[None, :]
        order_pred = light_pred[rows, None] >= light_pred[None, :]
        flipped += int(np.count_nonzero(order_src != order_pred))
    return flipped / light_src.size


def brightness(prediction: Image) -> float:
    """Mean grey level (Rec. 601 luma) in [0, 1]."""
    return float(np.mean(np.asarray(prediction, dtype=np.float64) @ REC601))


def noise_sigma(prediction: Image) -> float:
    """Estimated standard deviation of Gaussian noise, [0, 1] scale (scikit-image's
    wavelet-based ``estimate_sigma``, Donoho's MAD estimator, averaged over channels)."""
    from skimage.restoration import estimate_sigma

    image = np.asarray(prediction, dtype=np.float64)
    return float(estimate_sigma(image, channel_axis=image.ndim - 1, average_sigmas=True))


def colourfulness(prediction: Image) -> float:
    """Hasler and Süsstrunk's colourfulness (2003) on the 0-255 scale: 0 grey, ~33
    moderately, ~59 quite, ~109 extremely colourful."""
    image = np.asarray(prediction, dtype=np.float64) * 255.0
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.sqrt(np.var(rg) + np.var(yb))
    centre = np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return float(spread + 0.3 * centre)


# -- NIQE ------------------------------------------------------------------------------------
NIQE_BLOCK = 96
"""NIQE's patch size at full scale (pixels); the half scale uses 48."""
NIQE_FEATURES = 36
NIQE_SHARPNESS = 0.75
"""Fitting keeps the patches whose sharpness is above this fraction of the image's sharpest."""
_GAMMAS = np.arange(0.2, 10.0005, 0.001)


def _gamma(x: np.ndarray) -> np.ndarray:
    from scipy.special import gamma

    return gamma(x)


_AGGD_RATIO = _gamma(2 / _GAMMAS) ** 2 / (_gamma(1 / _GAMMAS) * _gamma(3 / _GAMMAS))


def _aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Shape and left/right scale of an asymmetric generalised Gaussian fit (moment
    matching on a grid of shapes, as the authors' ``estimateaggdparam``); NaN for values
    on one side of 0 only (a flat patch), which NIQE leaves out."""
    left = np.sqrt(np.mean(values[values < 0] ** 2)) if np.any(values < 0) else 0.0
    right = np.sqrt(np.mean(values[values > 0] ** 2)) if np.any(values > 0) else 0.0
    if left == 0 or right == 0:
        return float("nan"), float("nan"), float("nan")
    skew = left / right
    r_hat = float(np.mean(np.abs(values))) ** 2 / float(np.mean(values ** 2))
    r_norm = r_hat * (skew ** 3 + 1) * (skew + 1) / (skew ** 2 + 1) ** 2
    alpha = float(_GAMMAS[np.argmin((_AGGD_RATIO - r_norm) ** 2)])
    scale = np.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    return alpha, float(left * scale), float(right * scale)


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 features of one patch (the authors' ``computefeature``)."""
    alpha, left, right = _aggd(block.ravel())
    features = [alpha, (left + right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, left, right = _aggd((block * np.roll(block, shift, axis=(0, 1))).ravel())
        mean = (right - left) * _gamma(2 / alpha) / _gamma(1 / alpha)
        features += [alpha, float(mean), left, right]
    return features


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x ** 3 - 2.5 * x ** 2 + 1,
                    np.where(x <= 2, -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2, 0.0))


def _halve(image: np.ndarray) -> np.ndarray:
    """Half size as MATLAB's ``imresize(image, 0.5)``: bicubic, antialiased (the kernel
    stretched 2x), borders mirrored; one axis after the other."""
    for axis in (0, 1):
        length = image.shape[axis]
        centre = 2 * np.arange(1, (length + 1) // 2 + 1) - 0.5  # 1-based input coordinates
        taps = np.floor(centre - 4)[:, None] + np.arange(10)[None, :]
        weights = 0.5 * _cubic(0.5 * (centre[:, None] - taps))
        weights /= weights.sum(axis=1, keepdims=True)
        mirror = np.concatenate([np.arange(length), np.arange(length)[::-1]])
        index = mirror[(taps.astype(int) - 1) % (2 * length)]
        moved = np.moveaxis(image, axis, 0)
        image = np.moveaxis(np.einsum("ot,ot...->o...", weights, moved[index]), 0, axis)
    return image


def niqe_features(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch NIQE features ``(patches, 36)`` and patch sharpness, as the authors'
    MATLAB ``computequality``: grey (Rec. 601 as ``rgb2gray``, 0-255) cropped to whole
    96-pixel patches, normalised by a 7x7 Gaussian (sigma 7/6) local mean and deviation; per
    patch an AGGD fit of the normalised values and of four neighbour products; at full
    scale and at half scale (``imresize(0.5)``)."""
    from scipy.ndimage import correlate

    grey = np.asarray(image, dtype=np.float64) @ REC601 * 255.0
    rows, cols = grey.shape[0] // NIQE_BLOCK, grey.shape[1] // NIQE_BLOCK
    if rows == 0 or cols == 0:
        raise ValueError(f"image is {grey.shape[0]}x{grey.shape[1]} (HxW), smaller than "
                         f"NIQE's {NIQE_BLOCK}x{NIQE_BLOCK} patch")
    grey = grey[:rows * NIQE_BLOCK, :cols * NIQE_BLOCK]
    axis = np.arange(7) - 3
    window = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (7 / 6) ** 2))
    window /= window.sum()
    per_scale, sharpness = [], np.zeros(0)
    for scale in (1, 2):
        mu = correlate(grey, window, mode="nearest")
        sigma = np.sqrt(np.abs(correlate(grey * grey, window, mode="nearest") - mu * mu))
        structure = (grey - mu) / (sigma + 1)
        size = NIQE_BLOCK // scale
        feats, sharp = [], []
        for c in range(cols):  # column-major patch order, as MATLAB's blkproc
            for r in range(rows):
                cut = (slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
                feats.append(_block_features(structure[cut]))
                sharp.append(float(np.mean(sigma[cut])))
        per_scale.append(np.array(feats))
        if scale == 1:
            sharpness = np.array(sharp)
            grey = _halve(grey)
    return np.hstack(per_scale), sharpness


def fit_niqe(images: list[Image]) -> tuple[np.ndarray, np.ndarray]:
    """The pristine model ``(mu, cov)`` of ``images``: mean and covariance of the features
    of their sharp patches (above :data:`NIQE_SHARPNESS` of each image's sharpest), as the
    authors' ``estimatemodelparam``."""
    kept = []
    for image in images:
        feats, sharp = niqe_features(image)
        kept.append(feats[sharp > NIQE_SHARPNESS * sharp.max()])
    features = _textured(np.vstack(kept), "the fitting images")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def niqe(image: Image, mu: np.ndarray, cov: np.ndarray) -> float:
    """NIQE: the distance between the image's patch-feature Gaussian and the pristine one
    ``(mu, cov)``; lower looks more natural."""
    feats = _textured(niqe_features(image)[0], "the image")
    diff = mu - feats.mean(axis=0)
    own = np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros_like(cov)
    return float(np.sqrt(diff @ np.linalg.pinv((cov + own) / 2) @ diff))


def _textured(features: np.ndarray, what: str) -> np.ndarray:
    """The patches with features (flat patches have NaN ones); a ``ValueError`` if none."""
    kept = features[~np.isnan(features).any(axis=1)]
    if len(kept) == 0:
        raise ValueError(f"{what} has no textured {NIQE_BLOCK}x{NIQE_BLOCK} patch for NIQE")
    return kept


NIQE_KEYS = {".npz": ("mu_pris_param", "cov_pris_param"), ".mat": ("mu_prisparam",
                                                                    "cov_prisparam")}
"""The arrays of a NIQE parameter file: BasicSR's ``niqe_pris_params.npz`` or the authors'
MATLAB ``modelparameters.mat``."""


def read_niqe_params(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, cov)`` from a NIQE parameter file; a ``DataError`` naming the file and what is
    wrong when it is missing, unreadable or not 36 means and a 36x36 covariance."""
    keys = NIQE_KEYS.get(path.suffix.lower())
    if keys is None:
        raise DataError(f"{path}: NIQE parameters must be a .npz (keys {NIQE_KEYS['.npz']}) "
                        f"or .mat (keys {NIQE_KEYS['.mat']}) file")
    if not path.is_file():
        raise DataError(f"{path}: no such NIQE parameter file")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        else:
            from scipy.io import loadmat

            arrays = loadmat(path)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a bad file
        raise DataError(f"{path}: not a readable NIQE parameter file "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: NIQE parameter file lacks {', '.join(missing)} "
                        f"(has: {', '.join(sorted(k for k in arrays if not k.startswith('__')))})")
    mu = np.asarray(arrays[keys[0]], dtype=np.float64).ravel()
    cov = np.asarray(arrays[keys[1]], dtype=np.float64)
    if mu.shape != (NIQE_FEATURES,) or cov.shape != (NIQE_FEATURES, NIQE_FEATURES):
        raise DataError(f"{path}: NIQE parameters must be {NIQE_FEATURES} means and a "
                        f"{NIQE_FEATURES}x{NIQE_FEATURES} covariance, got {keys[0]} "
                        f"{arrays[keys[0]].shape} and {keys[1]} {arrays[keys[1]].shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
        raise DataError(f"{path}: NIQE parameters hold inf or NaN")
    return mu, cov


def write_niqe_params(path: Path, mu: np.ndarray, cov: np.ndarray) -> None:
    """Save ``(mu, cov)`` as a ``.npz`` that :func:`read_niqe_params` reads."""
    np.savez(path, **dict(zip(NIQE_KEYS[".npz"], (mu, cov), strict=True)))


def niqe_metric(path: Path) -> NoReferenceMetric:
    """The ``niqe`` metric with the pristine parameters of ``path`` (see
    :func:`read_niqe_params`)."""
    mu, cov = read_niqe_params(path)
    return NoReferenceMetric("niqe", lambda image: niqe(image, mu, cov),
                             higher_is_better=False, min_size=NIQE_BLOCK,
                             description=f"NIQE naturalness distance (parameters {path})")


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    """Register the built-in no-reference metrics (NIQE needs a parameter file: the CLI's
    ``--niqe-params``)."""
    register(NoReferenceMetric("loe", loe, higher_is_better=False, needs_source=True,
                               description="lightness-order error against the input "
                                           "(Wang et al. 2013)"))
    register(NoReferenceMetric("brightness", brightness, higher_is_better=None,
                               description="mean grey level (Rec. 601 luma), 0-1"))
    register(NoReferenceMetric("noise_sigma", noise_sigma, higher_is_better=False,
                               description="estimated Gaussian noise sigma, 0-1 scale"))
    register(NoReferenceMetric("colourfulness", colourfulness, higher_is_better=None,
                               description="Hasler-Süsstrunk colourfulness, 0-255 scale"))
