"""The loss terms of training steps, summed and checked for finiteness where they are.

Copying a step's losses to the host to check them makes the host wait for the device at
every step, so it can never queue the next step while this one runs. A
:class:`LossMonitor` keeps the log window's sums, and a record of the first step whose loss
was not finite, on the losses' device: :meth:`LossMonitor.update` launches a few small
kernels and reads nothing back; :meth:`LossMonitor.read` (at the logging cadence and before
every checkpoint) copies everything to the host at once and raises for a non-finite step,
naming that step even when it is read some steps later.
"""

from __future__ import annotations

import math

import torch

from restorekit.errors import TrainingError

CHECK_EVERY = 10
"""Steps between reads when the losses are not logged (``log_every`` 0)."""


class LossMonitor:
    """Loss sums of one log window and the first non-finite step, kept on the device.

    ``sums`` and ``count`` start the window (restored from a checkpoint, so that the first
    record after a resume averages the whole window).
    """

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0) -> None:
        self.count = count
        self._start = dict(sums or {})  # sums of names no step has returned yet
        self._names: list[str] = []
        self._sums: torch.Tensor | None = None  # float64, one per name
        # The first step with a non-finite term: its terms, epoch and step (0-based, -1 =
        # none yet).
        self._bad_values: torch.Tensor | None = None
        self._bad_epoch: torch.Tensor | None = None
        self._bad_step: torch.Tensor | None = None

    def update(self, terms: dict[str, torch.Tensor], epoch: int, step: int) -> None:
        """Add one step's loss terms (``epoch`` and ``step`` 0-based, the step counted over
        the whole run); launches kernels, reads nothing back."""
        self.count += 1
        if not terms:
            return
        if self._sums is None:
            self._allocate(next(iter(terms.values())).device)
        for name in terms:
            if name not in self._names:
                self._add(name)
        assert self._sums is not None and self._bad_values is not None
        assert self._bad_epoch is not None and self._bad_step is not None
        device = self._sums.device
        values = torch.stack([torch.as_tensor(terms[n], device=device).detach().reshape(())
                              .float() if n in terms else torch.zeros((), device=device)
                              for n in self._names]).double()
        self._sums.add_(values)
        first = torch.isfinite(values).all().logical_not_() & (self._bad_step < 0)
        self._bad_values = torch.where(first, values, self._bad_values)
        self._bad_epoch = torch.where(first, epoch, self._bad_epoch)
        self._bad_step = torch.where(first, step, self._bad_step)

    def _allocate(self, device: torch.device) -> None:
        self._sums = torch.zeros(0, dtype=torch.float64, device=device)
        self._bad_values = torch.zeros(0, dtype=torch.float64, device=device)
        self._bad_epoch = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def _add(self, name: str) -> None:
        assert self._sums is not None and self._bad_values is not None
        self._names.append(name)
        start = self._start.pop(name, 0.0)
        self._sums = torch.cat([self._sums, self._sums.new_full((1,), start)])
        self._bad_values = torch.cat([self._bad_values, self._bad_values.new_zeros(1)])

    def read(self, where: str) -> dict[str, float]:
        """The window's loss sums, copied from the device at once.

        Raises a one-line :class:`TrainingError` when a step since this monitor started had
        a non-finite term: "loss 'NAME' is VALUE at epoch E, step S; training stopped,
        WHERE", E and S those of that first step (1-based); ``where`` says what is left
        (e.g. "the last good checkpoint is ...").
        """
        if self._sums is None:
            return dict(self._start)
        assert self._bad_values is not None
        assert self._bad_epoch is not None and self._bad_step is not None
        n = len(self._names)
        host = torch.cat([self._sums, self._bad_values,
                          torch.stack([self._bad_epoch, self._bad_step]).double()]).tolist()
        epoch, step = int(host[2 * n]), int(host[2 * n + 1])
        if step >= 0:
            name, value = next((k, v) for k, v in zip(self._names, host[n:2 * n], strict=True)
                               if not math.isfinite(v))
            raise TrainingError(f"loss {name!r} is {value} at epoch {epoch + 1}, step "
                                f"{step + 1}; training stopped, {where}")
        return {**self._start, **dict(zip(self._names, host[:n], strict=True))}

    def reset(self) -> None:
        """Start a new window (a non-finite step already seen is still reported)."""
        self.count = 0
        self._start = {}
        if self._sums is not None:
            self._sums.zero_()
