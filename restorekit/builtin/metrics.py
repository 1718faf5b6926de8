"""Built-in full-reference metrics: PSNR, SSIM, CIEDE2000 and MAE, and PSNR and SSIM under
the GT-mean protocol of the low-light literature.

Each takes (prediction, target) images of the same shape, float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from restorekit.api import Image, Metric
from restorekit.hookspecs import hookimpl


def _pair(prediction: Image, target: Image) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction, dtype=np.float64)
    ref = np.asarray(target, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"images differ in shape: prediction {pred.shape}, "
                         f"target {ref.shape}")
    return pred, ref


def psnr(prediction: Image, target: Image) -> float:
    """Peak signal-to-noise ratio in dB (data range 1); inf for identical images (written
    as null by ``--json``)."""
    from skimage.metrics import peak_signal_noise_ratio

    pred, ref = _pair(prediction, target)
    if np.array_equal(pred, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(ref, pred, data_range=1.0))


SSIM_WINDOW = 7


def ssim(prediction: Image, target: Image) -> float:
    """Structural similarity (scikit-image defaults, 7x7 window, channels averaged)."""
    from skimage.metrics import structural_similarity

    pred, ref = _pair(prediction, target)
    if min(ref.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"images of {ref.shape[0]}x{ref.shape[1]} (HxW) are smaller than "
                         f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window")
    return float(structural_similarity(ref, pred, channel_axis=ref.ndim - 1, data_range=1.0))


def ciede2000(prediction: Image, target: Image) -> float:
    """Mean CIEDE2000 colour difference in CIELAB (0 = identical)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    pred, ref = _pair(prediction, target)
    axis = ref.ndim - 1  # a non-negative axis: some scikit-image 0.26 code mis-slices -1
    lab_pred = rgb2lab(np.clip(pred, 0, 1), channel_axis=axis)
    lab_ref = rgb2lab(np.clip(ref, 0, 1), channel_axis=axis)
    return float(np.mean(deltaE_ciede2000(lab_ref, lab_pred, channel_axis=axis)))


REC601 = np.array([0.299, 0.587, 0.114])
"""Rec. 601 luma weights of R, G, B: OpenCV's ``COLOR_RGB2GRAY``."""


def gt_mean(prediction: Image, target: Image) -> np.ndarray:
    """``prediction`` scaled by mean grey of ``target`` / mean grey of ``prediction``, clipped
    to [0, 1]: the GT-mean correction of KinD, LLFlow and HVI-CIDNet's ``measure.py
    --use_GT_mean`` (grey = Rec. 601 luma, OpenCV's RGB2GRAY). A black prediction, which
    has no brightness to scale, is returned unchanged.

    ``measure.py`` applies it to 8-bit images, where OpenCV rounds each grey value to an
    integer; here grey stays a float, which moves the ratio by less than 0.5 / mean grey
    (255 scale).
    """
    pred, ref = _pair(prediction, target)
    grey_pred = float(np.mean(pred @ REC601))
    if grey_pred <= 0:
        return pred
    return np.clip(pred * (float(np.mean(ref @ REC601)) / grey_pred), 0.0, 1.0)


def psnr_gtmean(prediction: Image, target: Image) -> float:
    """PSNR after the GT-mean correction (:func:`gt_mean`)."""
    return psnr(gt_mean(prediction, target), target)


def ssim_gtmean(prediction: Image, target: Image) -> float:
    """SSIM after the GT-mean correction (:func:`gt_mean`)."""
    return ssim(gt_mean(prediction, target), target)


def mae(prediction: Image, target: Image) -> float:
    """Mean absolute error."""
    pred, ref = _pair(prediction, target)
    return float(np.mean(np.abs(pred - ref)))


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    """Register the built-in metrics."""
    register(Metric("psnr", psnr, higher_is_better=True,
                    description="peak signal-to-noise ratio, dB (data range 1)"))
    register(Metric("ssim", ssim, higher_is_better=True,
                    description="structural similarity (scikit-image, channels averaged)",
                    min_size=SSIM_WINDOW))
    register(Metric("psnr_gtmean", psnr_gtmean, higher_is_better=True,
                    description="PSNR after scaling the prediction to the ground truth's mean "
                                "grey (the GT-mean protocol of KinD, LLFlow, HVI-CIDNet)"))
    register(Metric("ssim_gtmean", ssim_gtmean, higher_is_better=True,
                    description="SSIM after the same GT-mean scaling", min_size=SSIM_WINDOW))
    register(Metric("ciede2000", ciede2000, higher_is_better=False,
                    description="mean CIEDE2000 colour difference"))
    register(Metric("mae", mae, higher_is_better=False, description="mean absolute error"))
