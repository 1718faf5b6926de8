"""Declared option and parameter ranges (issue 11): machine-readable, checked in one place."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from restorekit import Preprocessor, hookimpl, testing
from restorekit.api import Model, check_range
from restorekit.engine import TrainConfig
from restorekit.errors import UsageError
from restorekit.pipeline import Pipeline


def test_check_range_ends() -> None:
    assert check_range(1, (1, None)) is None
    assert check_range(0, (1, None)) == "0 is out of range [1, inf]"
    assert check_range(0.0, (0.0, 1.0, "(]")) == "0.0 is out of range (0.0, 1.0]"
    assert check_range(1.0, (0.0, 1.0, "[)")) is not None
    assert check_range(0.5, (0.0, 1.0, "()")) is None
    assert "not a finite number" in check_range(math.nan, (None, None))
    assert "not a finite number" in check_range(math.inf, (0, None))
    assert "expects a number" in check_range("x", (0, 1))


def test_every_numeric_train_option_declares_a_numeric_range() -> None:
    """The ranges are data a tuner can read: numbers (or None), never prose."""
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("int", "float", int, float):
            lo, hi, *bounds = f.metadata["range"]
            assert all(v is None or isinstance(v, (int, float)) for v in (lo, hi)), f.name
    assert dataclasses.fields(TrainConfig)[0].metadata["range"] == (1, None)


@dataclass
class Opts:
    width: int = field(default=8, metadata={"range": (1, 64)})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})


class Ranged(Model):
    name = "ranged"
    Options = Opts

    def enhance(self, image):
        return image


def test_make_options_checks_declared_ranges() -> None:
    """A plugin gets the check for free from its field metadata."""
    assert Ranged.make_options(None, width=64).width == 64
    with pytest.raises(UsageError, match=r"^--width: 0 is out of range \[1, 64\]$"):
        Ranged.make_options(None, width=0)
    with pytest.raises(UsageError, match="--mode: expected one of a, b, got 'c'"):
        Ranged.make_options(None, mode="c")


def test_preprocessor_ranges_are_checked_when_parsed() -> None:
    class Lift:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("lift", lambda image, amount=0.5: image,
                                  params={"amount": 0.5}, ranges={"amount": (0.0, 1.0)}))

    with testing.isolated(lift=Lift()) as registry:
        assert str(Pipeline.parse("lift:amount=1", registry)) == "lift:amount=1.0"
        with pytest.raises(UsageError, match=r"lift:amount: 2.0 is out of range \[0.0, 1.0\]"):
            Pipeline.parse("lift:amount=2", registry)
        for spec in ("histeq:bins=99999999999", "clahe:clip=1e308", "clahe:kernel=100000"):
            with pytest.raises(UsageError, match="out of range"):
                Pipeline.parse(spec, registry)
        assert registry.preprocessor("histeq").ranges["bins"] == (2, 65536)


def test_pix2pixhd_options_and_smallest_image() -> None:
    from restorekit_pix2pixhd.model import Pix2PixHD

    for bad in ({"ngf": 0}, {"lr": math.nan}, {"lr": -1.0}, {"beta1": 2.0},
                {"batch_size": 0}, {"num_workers": -1}, {"crop_size": 1}):
        with pytest.raises(UsageError, match="--"):
            Pix2PixHD.make_options("quick", **bad)
    options = Pix2PixHD.make_options("quick")
    assert options.min_image_size() == 5  # 2 downsamplings: 4 + 1
    with pytest.raises(UsageError, match="--crop-size: 8 is smaller than the 17"):
        Pix2PixHD.make_options("lol", n_downsample_global=4, crop_size=8)


def test_a_restorekit_error_from_a_dataloader_worker_keeps_its_one_line() -> None:
    text = ("Caught UsageError in DataLoader worker process 0.\nOriginal Traceback (most "
            "recent call last):\n  File \"x.py\", line 1, in f\nrestorekit.errors."
            "UsageError: --preprocess: bad value")
    assert str(UsageError(text)) == "--preprocess: bad value"


def test_a_missing_compiler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.ext import _build

    monkeypatch.setenv("CXX", "no-such-compiler-xyz -O2")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler: 'no-such-compiler-xyz'") as info:
        _build._check_compiler()
    assert _build._summary(str(info.value)).startswith("no C++ compiler")
