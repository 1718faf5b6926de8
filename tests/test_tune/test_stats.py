"""The intervals of repeated runs (restorekit.tune.stats) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from restorekit.tune import stats
from restorekit.tune.stats import Interval


def test_t_interval_of_four_values_by_hand() -> None:
    # mean 2.5, s = sqrt(5/3) = 1.290994, s/sqrt(4) = 0.645497, t(0.975, 3) = 3.182446
    iv = stats.t_interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and iv.over == "seeds" and iv.n == 4
    assert iv.low == pytest.approx(2.5 - 3.182446305 * 0.645497224, abs=1e-6)
    assert iv.high == pytest.approx(4.554261, abs=1e-6)
    assert iv.method() == "t over 4 seeds"


def test_t_interval_of_two_seeds_is_wide_and_of_one_seed_absent() -> None:
    # two values 10 and 12: s = sqrt(2), s/sqrt(2) = 1, t(0.975, 1) = 12.706205
    iv = stats.t_interval([10.0, 12.0])
    assert (iv.low, iv.high) == pytest.approx((11 - 12.706205, 11 + 12.706205), abs=1e-6)
    one = stats.t_interval([10.0])
    assert one.mean == 10.0 and not one.known and one.significance() == "noise"
    assert not stats.t_interval([1.0, math.inf]).known


def test_paired_differences_keep_the_common_keys() -> None:
    assert stats.paired_differences({"a": 3.0, "b": 5.0, "c": 1.0},
                                    {"b": 4.0, "a": 1.0}) == {"a": 2.0, "b": 1.0}
    assert stats.mean_over_runs([{"x": 1.0, "y": 2.0}, {"x": 3.0, "z": 9.0}]) == {"x": 2.0}


def test_bootstrap_of_two_images_by_hand() -> None:
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 and
    # 97.5 percentiles of 2000 draws are 0 and 1.
    iv = stats.bootstrap([0.0, 1.0])
    assert (iv.mean, iv.low, iv.high, iv.over, iv.n) == (0.5, 0.0, 1.0, "images", 2)


def test_the_paired_bootstrap_cancels_what_two_configurations_share() -> None:
    rng = np.random.default_rng(1)
    hard = {f"img{i}": float(v) for i, v in enumerate(rng.uniform(10, 30, 40))}
    better = {k: v + 0.5 for k, v in hard.items()}  # the same images, 0.5 dB better each
    paired = stats.paired_bootstrap(better, hard)
    assert (paired.mean, paired.low, paired.high) == pytest.approx((0.5, 0.5, 0.5))
    assert paired.significance() == "better"
    alone = stats.bootstrap(list(better.values()))
    assert alone.high - alone.low > 3  # unpaired, the images' spread dominates
    # the same seed, the same interval
    assert stats.bootstrap(list(better.values())) == alone


def test_which_interval_decides() -> None:
    seeds5 = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    seeds2 = stats.t_interval([1.0, 2.0])
    images = stats.bootstrap(list(np.linspace(0, 1, 12)))
    few = stats.bootstrap([0.2, 0.4, 0.6])
    assert stats.decisive(seeds5, images) is seeds5
    assert stats.decisive(seeds2, images) is images
    assert stats.decisive(seeds2, few) is seeds2
    one = stats.t_interval([1.0])
    assert stats.decisive(one, stats.bootstrap([0.3])) is one  # one image: no interval


def test_significance_and_flipping() -> None:
    assert Interval(0.84, 0.31, 1.37, "seeds", 5).significance() == "better"
    assert Interval(0.52, -0.10, 1.14, "seeds", 5).significance() == "noise"
    worse = Interval(1.0, 0.5, 1.5, "images", 15).flipped()  # lower is better: +1 is worse
    assert (worse.mean, worse.low, worse.high) == (-1.0, -1.5, -0.5)
    assert worse.significance() == "worse" and worse.method() == "bootstrap over 15 images"
