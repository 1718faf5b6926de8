"""The low-light synthesis model (restorekit.data.lowlight)."""

from __future__ import annotations

import numpy as np
import pytest

from restorekit.data import EmbeddedPairs, LowLightModel, linear_to_srgb, srgb_to_linear
from restorekit.data.lowlight import synthesize


@pytest.fixture(scope="module")
def photos():
    pairs = EmbeddedPairs("train")
    return [pairs.pair(i)[1] for i in range(len(pairs))]


def test_srgb_curves():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    assert srgb_to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-3)
    assert linear_to_srgb(np.float32(0.0031308)) == pytest.approx(0.04045, abs=1e-4)


def test_deterministic_for_a_generator_state(photos):
    image = photos[0]
    a = synthesize(image, np.random.default_rng(42))
    b = synthesize(image, np.random.default_rng(42))
    c = synthesize(image, np.random.default_rng(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_output_is_an_8_bit_image(photos):
    low = synthesize(photos[1], np.random.default_rng(0))
    assert low.dtype == np.float32 and low.shape == photos[1].shape
    assert low.min() >= 0 and low.max() <= 1
    assert np.abs(low * 255 - np.round(low * 255)).max() < 1e-3  # 8-bit levels
    assert not np.shares_memory(low, photos[1])


def test_brightness_like_lol(photos):
    rng = np.random.default_rng(0)
    means = [synthesize(p, rng).mean() for p in photos for _ in range(6)]
    assert min(means) >= 0.01 and max(means) <= 0.2
    assert 0.03 <= float(np.median(means)) <= 0.12


def test_noisy_when_brightened():
    # A flat grey card: all variation in the low image is noise.
    high = np.full((64, 64, 3), 0.5, np.float32)
    model = LowLightModel(cast_prob=0.0)
    for seed in range(3):
        low = model.synthesize(high, np.random.default_rng(seed))
        brightened = low * (high.mean() / low.mean())
        assert np.std(brightened - high) > 4 / 255  # far above 8-bit quantisation
        assert abs(brightened.mean() - 0.5) < 1e-3


def test_darker_exposure_is_darker_and_noisier():
    high = np.full((64, 64, 3), 0.5, np.float32)
    dark = LowLightModel(exposure=(0.01, 0.01), cast_prob=0.0)
    bright = LowLightModel(exposure=(0.1, 0.1), cast_prob=0.0)
    low_dark = dark.synthesize(high, np.random.default_rng(0))
    low_bright = bright.synthesize(high, np.random.default_rng(0))
    assert low_dark.mean() < low_bright.mean()
    rel = [np.std(x) / x.mean() for x in (low_dark, low_bright)]
    assert rel[0] > rel[1]  # lower signal-to-noise ratio with fewer photons


def test_colour_cast():
    grey = np.full((48, 48, 3), 0.6, np.float32)
    no_cast = LowLightModel(cast_prob=0.0, exposure=(0.1, 0.1), full_well=(1e5, 1e5))
    means = no_cast.synthesize(grey, np.random.default_rng(0)).mean(axis=(0, 1))
    assert np.ptp(means) < 0.01
    cast = LowLightModel(cast_prob=1.0, cast_strength=0.3, exposure=(0.1, 0.1),
                         full_well=(1e5, 1e5))
    spreads = [np.ptp(cast.synthesize(grey, np.random.default_rng(s)).mean(axis=(0, 1)))
               for s in range(8)]
    assert max(spreads) > 0.03


def test_sample_ranges():
    model = LowLightModel()
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = model.sample(rng)
        assert model.exposure[0] <= p["k"] <= model.exposure[1]
        assert model.full_well[0] <= p["full_well"] <= model.full_well[1]
        assert model.read_noise[0] <= p["read_noise"] <= model.read_noise[1]
        assert np.all(np.abs(p["gains"] - 1) <= model.cast_strength + model.cast_jitter)
