"""LossMonitor (issue 20): loss sums and the first non-finite step, kept on the device."""

from __future__ import annotations

import pytest
import torch

from restorekit.engine.monitor import LossMonitor
from restorekit.errors import TrainingError
from restorekit.testing import HostReads


def terms(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def test_sums_are_those_of_python_floats_and_only_read_reads() -> None:
    steps = [terms(g=0.1 * i + 1 / 3, d=2.0 ** -i) for i in range(7)]
    monitor = LossMonitor({"g": 0.25}, count=1)  # a window restored from a checkpoint
    with HostReads() as reads:
        for i, step in enumerate(steps):
            monitor.update(step, epoch=0, step=i)
        assert len(reads) == 0
        sums = monitor.read("unused")
        assert len(reads) == 1
    expected = {"g": 0.25, "d": 0.0}
    for step in steps:  # what the loop summed on the host before
        for k, v in step.items():
            expected[k] += float(v)
    assert sums == expected and monitor.count == 8
    monitor.reset()
    monitor.update(terms(g=1.0), epoch=0, step=7)  # a term left out counts as 0
    assert monitor.read("unused") == {"g": 1.0, "d": 0.0} and monitor.count == 1


def test_the_first_non_finite_step_is_named_when_read_later() -> None:
    monitor = LossMonitor()
    monitor.update(terms(a=1.0, b=2.0), epoch=0, step=0)
    monitor.update(terms(a=1.0, b=float("-inf")), epoch=1, step=4)
    monitor.reset()  # a window logged in between: the record stays
    monitor.update(terms(a=float("nan"), b=float("nan")), epoch=1, step=5)
    monitor.update(terms(a=1.0, b=1.0, c=float("inf")), epoch=2, step=9)
    with pytest.raises(TrainingError) as info:
        monitor.read("the last good checkpoint is last.safetensors")
    assert str(info.value) == ("loss 'b' is -inf at epoch 2, step 5; training stopped, the "
                               "last good checkpoint is last.safetensors")


def test_nothing_recorded_reads_the_start() -> None:
    assert LossMonitor({"g": 1.5}, 3).read("unused") == {"g": 1.5}
    monitor = LossMonitor()
    monitor.update({}, epoch=0, step=0)
    assert monitor.read("unused") == {} and monitor.count == 1
