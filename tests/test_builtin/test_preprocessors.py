"""Built-in preprocessors (restorekit.builtin.preprocessors)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import restorekit.builtin.preprocessors as pre
from restorekit.api import Preprocessor
from restorekit.data import EmbeddedPairs
from restorekit.errors import UsageError

NAMES = ["gamma", "autogamma", "clahe", "histeq", "denoise", "whitebalance", "unsharp"]


@pytest.fixture(scope="module")
def registered() -> dict[str, Preprocessor]:
    items: list[Preprocessor] = []
    pre.register_preprocessors(register=items.append)
    return {p.name: p for p in items}


@pytest.fixture(scope="module")
def test_pairs():
    pairs = EmbeddedPairs("test")
    return [pairs.pair(i) for i in range(len(pairs))]


def _dark_image(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.4 * np.sin(xx / 5.0)[..., None] * np.array([1.0, 0.8, 0.6])
    noisy = base * 0.12 + rng.normal(0, 0.01, (h, w, 3))
    return np.clip(noisy, 0, 1).astype(np.float32)


def test_all_builtins_registered(registered):
    assert sorted(registered) == sorted(NAMES)
    for item in registered.values():
        assert isinstance(item, Preprocessor) and item.description
        signature = inspect.signature(item.fn)
        defaults = {k: v.default for k, v in signature.parameters.items()
                    if v.default is not inspect.Parameter.empty}
        assert defaults == dict(item.params)  # the registry shows the real defaults


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(registered, name):
    item = registered[name]
    image = _dark_image()
    original = image.copy()
    out = item.fn(image, **item.params)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and np.isfinite(out).all()
    assert np.array_equal(image, original)  # input untouched
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize("name", NAMES)
def test_constant_images_survive(registered, name):
    item = registered[name]
    for value in (0.0, 1.0):
        out = item.fn(np.full((16, 16, 3), value, np.float32), **item.params)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_gamma_brightens():
    image = _dark_image()
    assert pre.gamma(image).mean() > image.mean()
    assert np.allclose(pre.gamma(image, gamma=1.0), image)
    assert pre.gamma(np.full((2, 2, 3), 0.25, np.float32), gamma=2.0)[0, 0, 0] == \
        pytest.approx(0.5)
    with pytest.raises(UsageError, match="gamma"):
        pre.gamma(image, gamma=0)


def test_autogamma_reaches_target():
    image = _dark_image()
    lum = pre.autogamma(image, target=0.45) @ np.array([0.2126, 0.7152, 0.0722])
    assert lum.mean() == pytest.approx(0.45, abs=0.01)
    bright = np.full((8, 8, 3), 0.8, np.float32)
    assert np.array_equal(pre.autogamma(bright), bright)
    black = np.zeros((8, 8, 3), np.float32)
    assert np.array_equal(pre.autogamma(black), black)
    with pytest.raises(UsageError, match="target"):
        pre.autogamma(image, target=1.5)


def test_clahe_raises_local_contrast_and_keeps_hue():
    rng = np.random.default_rng(0)
    flat = (0.45 + 0.05 * rng.random((64, 64, 1))).astype(np.float32)
    image = np.concatenate([flat, flat * 0.8, flat * 0.5], axis=-1)
    out = pre.clahe(image)
    assert out[..., 0].std() > 2 * image[..., 0].std()
    ratio_in = image[..., 2].mean() / image[..., 0].mean()
    ratio_out = out[..., 2].mean() / out[..., 0].mean()
    assert ratio_out == pytest.approx(ratio_in, rel=0.05)
    assert pre.clahe(image, clip=0.05, kernel=16).shape == image.shape


def test_histeq_spreads_a_dark_histogram():
    image = _dark_image()
    out = pre.histeq(image)
    assert out.max(axis=-1).mean() == pytest.approx(0.5, abs=0.1)
    assert out.std() > 3 * image.std()


@pytest.mark.parametrize("method", ["tv", "bilateral", "nlm"])
def test_denoise_reduces_noise(method):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:48]
    clean = np.stack([(xx > 24) * 0.6 + 0.2, (yy > 24) * 0.5 + 0.3,
                      np.full(xx.shape, 0.5)], axis=-1).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1).astype(np.float32)
    out = pre.denoise(noisy, method=method)
    assert np.abs(out - clean).mean() < 0.6 * np.abs(noisy - clean).mean()
    assert np.array_equal(pre.denoise(noisy, method=method, strength=0), noisy)


def test_denoise_bad_options():
    with pytest.raises(UsageError, match="method"):
        pre.denoise(_dark_image(), method="median")
    with pytest.raises(UsageError, match="strength"):
        pre.denoise(_dark_image(), strength=-1)


def test_noise_sigma_estimate():
    rng = np.random.default_rng(0)
    clean = np.full((128, 128, 3), 0.5, np.float32)
    for sigma in (0.02, 0.1):
        noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
        assert pre.noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)


def test_whitebalance_equalises_channel_means():
    image = _dark_image() * np.array([1.0, 0.7, 0.4], np.float32)
    means = pre.whitebalance(image).mean(axis=(0, 1))
    assert np.ptp(means) < 0.01 * means.mean()


def test_unsharp_adds_edge_contrast():
    image = np.full((32, 32, 3), 0.3, np.float32)
    image[:, 16:] = 0.6
    out = pre.unsharp(image, radius=2.0, amount=1.0)
    assert out[:, 15].mean() < 0.3 and out[:, 16].mean() > 0.6


def _score(fn, pairs):
    psnr = [peak_signal_noise_ratio(h, fn(lo), data_range=1) for lo, h in pairs]
    ssim = [structural_similarity(h, fn(lo), channel_axis=-1, data_range=1) for lo, h in pairs]
    return float(np.mean(psnr)), float(np.mean(ssim))


def test_autogamma_denoise_beats_identity_on_embedded_test(registered, test_pairs):
    """The classic baseline the lead relies on: brighten, then remove amplified noise."""
    ag, dn = registered["autogamma"], registered["denoise"]
    identity = _score(lambda x: x, test_pairs)
    bright = _score(lambda x: ag.fn(x, **ag.params), test_pairs)
    both = _score(lambda x: dn.fn(ag.fn(x, **ag.params), **dn.params), test_pairs)
    assert bright[0] > identity[0] + 3
    assert both[0] > identity[0] + 6 and both[1] > identity[1] + 0.2
    assert both[0] > bright[0] and both[1] > bright[1]
