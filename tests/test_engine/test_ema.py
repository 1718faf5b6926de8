"""WeightEMA: the moving average of a network's weights that a model keeps with --ema."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from restorekit.engine import WeightEMA


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def nudge(net: nn.Module, step: int) -> None:
    """An optimiser step's stand-in: new weights and running statistics."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1 * step)
    net.train()(torch.rand(2, 3, 8, 8))  # BatchNorm's buffers move, its counter counts


def test_the_average_is_the_hand_computed_one_and_leaves_the_weights_alone() -> None:
    net, decay = tiny_net(), 0.9
    ema = WeightEMA(net, decay)
    expected = {k: v.double().clone() for k, v in net.state_dict().items()}
    for step in range(1, 4):
        nudge(net, step)
        raw = {k: v.clone() for k, v in net.state_dict().items()}
        ema.update()
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value.double()
            else:
                expected[key] = value.double()
            assert torch.equal(value, raw[key]), key  # the network itself is untouched
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key].double(), value, rtol=0, atol=1e-6)
    assert int(averaged["1.num_batches_tracked"]) == 3
    assert not torch.allclose(averaged["0.weight"], net.state_dict()["0.weight"])
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_decay_zero_is_the_raw_weights() -> None:
    net = tiny_net()
    ema = WeightEMA(net, 0.0)
    for step in range(1, 3):
        nudge(net, step)
        ema.update()
    for key, value in net.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key


def test_state_round_trip_and_bad_decay() -> None:
    net = tiny_net()
    ema = WeightEMA(net, 0.5)
    nudge(net, 1)
    ema.update()
    other = WeightEMA(tiny_net(), 0.5)
    other.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(other.module.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\), got 1.0"):
        WeightEMA(net, 1.0)
