r"""A physically motivated model that turns a well-exposed photo into a low-light one.

It imitates what a camera records with a much shorter exposure (as in the LOL data
set): less light reaches the sensor, photon shot noise and read noise dominate, the
white balance may be off, and the result is stored as an 8-bit sRGB image.

For an sRGB image :math:`x \in [0, 1]` (per pixel and channel):

1. **Linearise** with the sRGB EOTF:
   :math:`l = x / 12.92` if :math:`x \le 0.04045`, else :math:`((x + 0.055) / 1.055)^{2.4}`.
2. **Colour cast** (with probability ``cast_prob`` = 0.5): per-channel gains
   :math:`g = (1 + t + j_R,\ 1 + j_G,\ 1 - t + j_B)` with tint :math:`t \sim U(-c, c)`
   (warm when :math:`t > 0`, cool when :math:`t < 0`; ``cast_strength`` :math:`c` = 0.12)
   and jitter :math:`j \sim U(-0.03, 0.03)`; :math:`l \leftarrow g \cdot l`.
3. **Exposure**: :math:`k` drawn log-uniformly in ``exposure`` = [1/80, 1/10];
   the expected sensor signal in electrons is :math:`s = k \cdot l \cdot F`, with the
   full-well capacity :math:`F` (electrons at saturation) drawn log-uniformly in
   ``full_well`` = [300, 1000].
4. **Poisson-Gaussian noise**: :math:`y = \mathrm{Poisson}(s) / F + n`,
   :math:`n \sim \mathcal{N}(0, \sigma_r^2)`, read noise :math:`\sigma_r` drawn uniformly
   in ``read_noise`` = [1e-3, 4e-3] (linear units, 1 = saturation).
5. **Clip** :math:`y` to [0, 1], **encode** with the sRGB OETF
   (:math:`12.92\,y` if :math:`y \le 0.0031308`, else :math:`1.055\,y^{1/2.4} - 0.055`) and
   **quantise** to 8 bits: :math:`\mathrm{round}(255\,\cdot) / 255`.

Shot noise has variance :math:`k l / F` in linear units, so the darker the exposure
the lower the signal-to-noise ratio :math:`\sqrt{k l F}`: a mid-grey pixel at
:math:`k = 1/30`, :math:`F = 500` collects about 4 electrons. With these ranges the
mean brightness of a typical photo falls to about 0.02-0.15, median ~0.07 (LOL's low
images: ~0.05)
and the result is visibly noisy once brightened.

The exposure range is darker than a linear intuition suggests because the sRGB curve
lifts shadows: scaling linear light by 1/4 only halves the sRGB values (k in
[1/20, 1/4] gives a median mean brightness of ~0.15, brighter than LOL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from restorekit.types import Image

__all__ = ["LowLightModel", "srgb_to_linear", "linear_to_srgb", "synthesize"]


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB EOTF: encoded values in [0, 1] -> linear light."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    """The sRGB OETF: linear light in [0, 1] -> encoded values."""
    y = np.clip(np.asarray(y, dtype=np.float32), 0, 1)
    return np.where(y <= 0.0031308, 12.92 * y,
                    1.055 * np.power(y, 1 / 2.4) - 0.055).astype(np.float32)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


@dataclass(frozen=True)
class LowLightModel:
    """Parameter ranges of the low-light model (see the module docstring)."""

    exposure: tuple[float, float] = (1 / 80, 1 / 10)
    """Range of the exposure factor k (log-uniform)."""
    full_well: tuple[float, float] = (300.0, 1000.0)
    """Electrons at saturation (log-uniform); fewer electrons mean more shot noise."""
    read_noise: tuple[float, float] = (1e-3, 4e-3)
    """Gaussian read-noise standard deviation in linear units (uniform)."""
    cast_prob: float = 0.5
    """Probability of a colour cast."""
    cast_strength: float = 0.12
    """Largest warm/cool tint t: gains (1 + t, 1, 1 - t)."""
    cast_jitter: float = 0.03
    """Largest random per-channel deviation of the gains."""
    bits: int = 8
    """Quantisation of the output (0 = none)."""

    def sample(self, rng: np.random.Generator) -> dict[str, object]:
        """Draw one set of parameters: k, full_well, read_noise and gains (3,)."""
        k = _log_uniform(rng, *self.exposure)
        full_well = _log_uniform(rng, *self.full_well)
        read_noise = float(rng.uniform(*self.read_noise))
        gains = np.ones(3, dtype=np.float32)
        if rng.uniform() < self.cast_prob:
            t = rng.uniform(-self.cast_strength, self.cast_strength)
            jitter = rng.uniform(-self.cast_jitter, self.cast_jitter, size=3)
            gains = (np.array([1 + t, 1.0, 1 - t]) + jitter).astype(np.float32)
        return {"k": k, "full_well": full_well, "read_noise": read_noise, "gains": gains}

    def synthesize(self, image: Image, rng: np.random.Generator) -> Image:
        """A low-light version of ``image``; deterministic for a given ``rng`` state."""
        p = self.sample(rng)
        linear = srgb_to_linear(np.clip(image, 0, 1)) * p["gains"]
        electrons = np.clip(linear, 0, None) * (p["k"] * p["full_well"])
        noisy = rng.poisson(electrons).astype(np.float32) / np.float32(p["full_well"])
        noisy += rng.normal(0.0, p["read_noise"], size=noisy.shape).astype(np.float32)
        out = linear_to_srgb(np.clip(noisy, 0, 1))
        if self.bits:
            levels = 2 ** self.bits - 1
            out = np.round(out * levels) / np.float32(levels)
        return out.astype(np.float32)


DEFAULT_MODEL = LowLightModel()


def synthesize(image: Image, rng: np.random.Generator,
               model: LowLightModel = DEFAULT_MODEL) -> Image:
    """A low-light version of ``image`` under ``model`` (the default ranges if omitted)."""
    return model.synthesize(image, rng)
