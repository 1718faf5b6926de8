"""Confidence intervals for repeated runs: over seeds (Student's t) and over images (a
percentile bootstrap with a fixed seed), for one configuration and for the paired
difference of two configurations trained with the same seeds on the same images.

Which interval decides (:func:`decisive`): the t-interval over seeds from
:data:`SEEDS_FOR_T` seeds on; with fewer seeds the image-level bootstrap (of each image's
mean over the seeds) where there are at least :data:`IMAGES_FOR_BOOTSTRAP` images, as its
interval then says more than a t-interval over two or three seeds (it does not cover the
seed-to-seed variation: the text says so); else the t-interval over the few seeds (none
with one seed).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from restorekit.evaluate import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_interval

CONFIDENCE = 0.95
SEEDS_FOR_T = 5
"""From this many seeds on, the t-interval over seeds decides."""
IMAGES_FOR_BOOTSTRAP = 10
"""With fewer seeds, the image bootstrap decides where there are at least this many images."""

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Interval:
    """A mean and its 95 % interval (``low``/``high`` None where none can be computed);
    ``over`` says what varied: ``"seeds"`` (t-interval) or ``"images"`` (bootstrap), ``n``
    how many."""

    mean: float
    low: float | None
    high: float | None
    over: str
    n: int

    @property
    def known(self) -> bool:
        return self.low is not None and self.high is not None

    def significance(self) -> str:
        """``"better"`` (the interval is above 0), ``"worse"`` (below) or ``"noise"``."""
        if not self.known:
            return "noise"
        assert self.low is not None and self.high is not None
        return "better" if self.low > 0 else "worse" if self.high < 0 else "noise"

    def method(self) -> str:
        """``t over 3 seeds`` or ``bootstrap over 15 images``."""
        if self.over == "seeds":
            return f"t over {self.n} seed{'s' if self.n != 1 else ''}"
        return f"bootstrap over {self.n} image{'s' if self.n != 1 else ''}"

    def flipped(self) -> Interval:
        """The interval of ``-x`` (a lower-is-better difference as an improvement)."""
        return Interval(-self.mean, None if self.high is None else -self.high,
                        None if self.low is None else -self.low, self.over, self.n)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its Student-t interval (``mean ± t(n-1) · s / √n``); no
    interval for fewer than 2 values or a non-finite one."""
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean()) if data.size else math.nan
    if data.size < 2 or not np.all(np.isfinite(data)):
        return Interval(mean, None, None, "seeds", int(data.size))
    half = float(stats.t.ppf((1 + confidence) / 2, data.size - 1)
                 * data.std(ddof=1) / math.sqrt(data.size))
    return Interval(mean, mean - half, mean + half, "seeds", int(data.size))


def bootstrap(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of ``values`` (one per image) and its 95 % percentile-bootstrap interval
    (:func:`restorekit.evaluate.bootstrap_interval`: images resampled, fixed seed)."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean()) if data.size else math.nan
    found = bootstrap_interval(data, resamples, seed) if data.size else None
    low, high = found if found is not None else (None, None)
    return Interval(mean, low, high, "images", int(data.size))


def paired_differences(a: Mapping[K, float], b: Mapping[K, float]) -> dict[K, float]:
    """``a[k] - b[k]`` for every key both have (a seed, an image), in ``a``'s order."""
    return {k: float(a[k]) - float(b[k]) for k in a if k in b}


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float],
                     resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean difference ``a - b`` over the images both were scored on, with its
    bootstrap interval: the images are resampled together, so what the two share (an easy
    or a hard image) cancels."""
    return bootstrap(list(paired_differences(a, b).values()), resamples, seed)


def mean_over_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each image's mean over ``runs`` (image -> value, one mapping per seed), for the
    images every run scored."""
    if not runs:
        return {}
    common = [k for k in runs[0] if all(k in r for r in runs[1:])]
    return {k: float(np.mean([r[k] for r in runs])) for k in common}


def decisive(by_seed: Interval, by_image: Interval | None) -> Interval:
    """The interval a verdict uses (see the module's docstring); without bounds where
    neither says anything (one seed and few images)."""
    if by_seed.n >= SEEDS_FOR_T:
        return by_seed
    if by_image is not None and by_image.known and by_image.n >= IMAGES_FOR_BOOTSTRAP:
        return by_image
    return by_seed
