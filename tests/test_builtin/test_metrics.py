"""Built-in metrics (restorekit.builtin.metrics) against scikit-image and known cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import restorekit.builtin.metrics as met
from restorekit.api import Metric


@pytest.fixture(scope="module")
def metrics() -> dict[str, Metric]:
    items: list[Metric] = []
    met.register_metrics(register=items.append)
    return {m.name: m for m in items}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    target = rng.random((40, 50, 3)).astype(np.float32)
    prediction = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    return prediction, target


def test_registered(metrics):
    assert sorted(metrics) == ["ciede2000", "mae", "psnr", "ssim"]
    assert metrics["psnr"].higher_is_better and metrics["ssim"].higher_is_better
    assert not metrics["ciede2000"].higher_is_better and not metrics["mae"].higher_is_better
    assert all(m.description for m in metrics.values())


def test_against_scikit_image(metrics, images):
    pred, target = images
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    assert metrics["psnr"].fn(pred, target) == pytest.approx(
        peak_signal_noise_ratio(t64, p64, data_range=1))
    assert metrics["ssim"].fn(pred, target) == pytest.approx(
        structural_similarity(t64, p64, channel_axis=2, data_range=1))
    assert metrics["ciede2000"].fn(pred, target) == pytest.approx(
        np.mean(deltaE_ciede2000(rgb2lab(t64), rgb2lab(p64))))
    assert metrics["mae"].fn(pred, target) == pytest.approx(np.mean(np.abs(p64 - t64)))


def test_identical_images(metrics, images):
    _, target = images
    assert metrics["psnr"].fn(target, target) == float("inf")
    assert metrics["ssim"].fn(target, target) == pytest.approx(1.0)
    assert metrics["ciede2000"].fn(target, target) == pytest.approx(0.0, abs=1e-9)
    assert metrics["mae"].fn(target, target) == 0.0


def test_known_values(metrics):
    a = np.full((16, 16, 3), 0.5, np.float32)
    b = a + np.float32(0.1)
    assert metrics["psnr"].fn(b, a) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert metrics["mae"].fn(b, a) == pytest.approx(0.1, abs=1e-6)
    black, white = np.zeros_like(a), np.ones_like(a)
    assert metrics["ciede2000"].fn(black, white) == pytest.approx(100.0, abs=0.1)


def test_better_prediction_scores_better(metrics, images):
    pred, target = images
    closer = (0.5 * pred + 0.5 * target).astype(np.float32)
    for m in metrics.values():
        worse, better = m.fn(pred, target), m.fn(closer, target)
        assert (better > worse) if m.higher_is_better else (better < worse)


@pytest.mark.parametrize("name", ["psnr", "ssim", "ciede2000", "mae"])
def test_shape_mismatch(metrics, name):
    with pytest.raises(ValueError) as info:
        metrics[name].fn(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    assert "(8, 8, 3)" in str(info.value) and "(8, 9, 3)" in str(info.value)
