"""The background loader (issue 20): a DataLoader's batches, in order, from a thread."""

from __future__ import annotations

import threading

import pytest
import torch

from restorekit.engine.background import BackgroundLoader
from restorekit.errors import DataError


class Items(torch.utils.data.Dataset):
    """Item i is a tensor of i's; item ``bad`` raises a one-line DataError."""

    def __init__(self, count: int = 10, bad: int = -1) -> None:
        self.count, self.bad = count, bad
        self.done: list[int] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i == self.bad:
            raise DataError(f"item{i}.png: cannot read the image (truncated file)")
        self.done.append(i)
        return {"low": torch.full((2,), float(i))}


def loader(dataset: Items, **kwargs) -> torch.utils.data.DataLoader:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    return torch.utils.data.DataLoader(dataset, batch_sampler=[order[i:i + 3] for i in
                                                               range(0, len(order), 3)],
                                       **kwargs)


CPU = torch.device("cpu")


def threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "restorekit-loader"]


@pytest.mark.parametrize("workers", [0, 1])
def test_same_batches_in_the_same_order(workers: int) -> None:
    expected = list(loader(Items()))
    with BackgroundLoader(loader(Items(), num_workers=workers), CPU, threaded=True) as got:
        got = list(got)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a["low"], b["low"])
    assert threads() == []


def test_on_a_cpu_device_batches_are_prepared_inline() -> None:
    dataset = Items()
    batches = iter(BackgroundLoader(loader(dataset), CPU))
    next(batches)
    assert threads() == [] and len(dataset.done) == 3  # the first batch alone


def test_an_error_in_the_thread_is_raised_where_its_batch_is_asked_for() -> None:
    dataset = Items(bad=9)  # the second batch of the permutation
    batches = []
    with pytest.raises(DataError) as info, \
            BackgroundLoader(loader(dataset), CPU, threaded=True) as got:
        batches.extend(got)
    assert str(info.value) == "item9.png: cannot read the image (truncated file)"
    assert len(batches) == 1 and threads() == []


def test_leaving_early_stops_the_thread() -> None:
    dataset = Items(count=300)
    with BackgroundLoader(loader(dataset), CPU, prefetch=2, threaded=True) as batches:
        first = next(iter(batches))
    assert threads() == []
    assert first["low"].shape == (3, 2)
    # The thread stopped after the batches it could hand over, not at the epoch's end.
    assert len(dataset.done) <= 3 * 4
