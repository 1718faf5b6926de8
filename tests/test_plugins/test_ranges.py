"""Declared option and parameter ranges (issue 11): machine-readable, checked in one place."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from dataclasses import dataclass, field

import pytest

from restorekit import Preprocessor, hookimpl, testing
from restorekit.api import Model, check_range, field_problem
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
    assert dataclasses.fields(TrainConfig)[0].metadata["range"] == (1, 100_000)


def shipped_options() -> dict[str, type]:
    """The options class of every model restorekit ships (built-ins and the plugins in
    plugins/), plus ``TrainConfig`` itself and the options of ``restorekit new-plugin``."""
    import zerodce_plugin

    import restorekit_pix2pixhd
    from restorekit.cli.new_plugin import _files

    module = types.ModuleType("scaffold_model")
    sys.modules[module.__name__] = module  # dataclasses looks its module up
    try:
        exec(_files("scaffold", "model")["scaffold_plugin/model.py"], module.__dict__)  # noqa: S102
    finally:
        del sys.modules[module.__name__]
    found = {"TrainConfig": TrainConfig, "new-plugin": module.ScaffoldOptions}
    with testing.isolated(pix2pixhd=restorekit_pix2pixhd, zerodce=zerodce_plugin) as registry:
        found.update({name: cls.Options for name, cls in registry.items["models"].items()})
    return found


@pytest.mark.parametrize("name", sorted(shipped_options()))
def test_every_shipped_number_has_a_finite_range(name: str) -> None:
    """Issue 19: `--n-blocks-global 99999999999999999999` built blocks until memory ran out,
    `--num-workers` as many started processes forever. Every numeric option restorekit
    ships declares a finite upper bound (a plugin's may still say None: the 64-bit limit
    of :func:`check_range` then holds)."""
    options = shipped_options()[name]
    numeric = [f for f in dataclasses.fields(options)
               if f.type in ("int", "float", int, float)]
    for f in numeric:
        lo, hi, *_ = f.metadata.get("range", (None, None))
        assert lo is not None and hi is not None and math.isfinite(hi), (name, f.name)
        default = f.default
        assert check_range(default, f.metadata["range"]) is None, (name, f.name, default)


def test_declared_types_are_checked_with_the_ranges() -> None:
    """A config file or a checkpoint hands over JSON values: 8.7 for a channel count, a bool
    for an integer, a number for a string are refused by type before the range."""
    from restorekit_pix2pixhd.model import Pix2PixHD

    fields = {f.name: f for f in dataclasses.fields(Pix2PixHD.Options)}
    cases = [("ngf", 8.7, "expected an integer, got 8.7"),
             ("ngf", 64.0, "expected an integer, got 64.0"),
             ("ngf", True, "expected an integer, got True"),
             ("fused", 1, "expected true or false, got 1"),
             ("vgg_weights", 5, "expected a string, got 5"),
             ("lr", [1] * 100, "expected a number, got [1, 1, 1,")]
    for name, value, words in cases:
        problem = field_problem(fields[name], value)
        assert problem is not None and problem.startswith(words), (name, value, problem)
    assert field_problem(fields["lr"], 1) is None  # an int is a float; the range decides
    assert field_problem(fields["lr"], 2) == "2 is out of range (0.0, 1.0]"
    with pytest.raises(UsageError, match=r"^--ngf: expected an integer, got 8.7$"):
        Pix2PixHD.make_options("quick", ngf=8.7)


def test_integers_beyond_64_bits_are_refused_even_without_an_upper_bound() -> None:
    assert check_range(2**63 - 1, (0, None)) is None
    assert check_range(2**63, (0, None)) == \
        "9223372036854775808 does not fit a 64-bit integer (allowed: [0, inf])"
    assert check_range(-(2**63) - 1, (None, None)) is not None


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


def test_memory_running_out_in_build_names_the_sizes() -> None:
    """Where ranges cannot help (a CUDA card smaller than the network): one line naming the
    sizes above their defaults, not the allocator's multi-line report; any other error of
    ``build`` passes unchanged. (The CPU allocator's real failure is a row of the table in
    tests/test_cli/test_reliability.py.)"""
    import torch

    from restorekit.engine import build_model
    from restorekit.errors import RestorekitError
    from restorekit_pix2pixhd.model import Pix2PixHD

    report = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
              "79.19 GiB of which 1.2 GiB is free.\nIf reserved but unallocated memory is "
              "large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")

    class Big(Pix2PixHD):
        def build(self, device: torch.device) -> None:
            raise self.error

    model = Big(Pix2PixHD.make_options("lol", ngf=1024, n_blocks_global=12), Pipeline())
    model.error = torch.OutOfMemoryError(report)
    with pytest.raises(RestorekitError) as info:
        build_model(model, torch.device("cuda"))
    assert str(info.value) == ("building pix2pixhd with ngf=1024, n_blocks_global=12 needs "
                               "more memory than this machine has (cuda could not allocate "
                               "20.00 GiB); choose smaller sizes")
    model.error = RuntimeError("Expected 4D input")
    with pytest.raises(RuntimeError, match="^Expected 4D input$"):
        build_model(model, torch.device("cpu"))
