"""An exponential moving average of a network's weights (a model's ``--ema DECAY``).

GAN restoration trainers (BasicSR, KAIR) evaluate an average of the generator's weights over
the last steps rather than the weights of the last step: it is steadier and usually better.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """``average = decay * average + (1 - decay) * weights``, after each optimiser step of
    ``net`` (:meth:`update`), kept in ``module``: a copy of ``net`` on its device, in eval mode
    and without gradients. Floating-point parameters and buffers are averaged, other buffers
    (counters) copied.

    The update runs on the device without reading anything back (a CUDA graph can capture
    it). ``state_dict``/``load_state_dict`` make it a part a model lists in
    :meth:`restorekit.api.TrainableModel.stateful`: saved in every checkpoint, resumed
    exactly, loaded for inference.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(net).requires_grad_(False).eval()
        pairs = list(zip(self.module.state_dict(keep_vars=True).values(),
                         net.state_dict(keep_vars=True).values(), strict=True))
        self._averaged = [(a.data, w.data) for a, w in pairs if a.is_floating_point()]
        self._copied = [(a.data, w.data) for a, w in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights."""
        if self._averaged:
            averages, weights = zip(*self._averaged, strict=True)
            torch._foreach_lerp_(list(averages), list(weights), 1.0 - self.decay)
        for average, weight in self._copied:
            average.copy_(weight)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (the copy's own ``state_dict``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights in place (same names and shapes, else an error)."""
        self.module.load_state_dict(state)
