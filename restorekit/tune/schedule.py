"""Short trials that are the full schedule, shortened (``restorekit tune --trial-epochs N``).

A trial's options are the preset's with its sampled values: the full-length configuration.
With ``--trial-epochs N`` the trial trains ``N`` epochs with its whole schedule scaled to
them: the engine's ``epochs`` option is set to ``N`` (a model with a schedule of its own
derives it from ``epochs``: Pix2PixHD scales ``niter`` and ``niter_decay`` to ``N``,
keeping the share of the learning-rate decay), ``eval_every`` scales with it (a trial is
evaluated, and so can be pruned, as often as the full run) and the pruner's warm-up is a
quarter of the trial's epochs. ``--max-steps`` and ``--max-minutes`` are hard limits
that cut the schedule where it is instead.

The configuration a trial keeps for ``--export-best`` is the full-length one, without the
per-trial limits and device (:data:`PER_TRIAL`); the options the trial trained with are
kept beside it (``--export-best --keep-limits``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from restorekit.api import TrainableModel

PER_TRIAL = ("max_steps", "max_minutes", "device")
"""Options that say how long and where one trial runs, not what is trained."""


def shortened(full: Any, epochs: int) -> dict[str, Any]:
    """The option values that scale the schedule of ``full`` (the full-length options) to
    ``epochs`` epochs: ``epochs`` itself and ``eval_every`` in proportion (at least 1)."""
    values: dict[str, Any] = {"epochs": epochs}
    if full.eval_every:
        values["eval_every"] = max(1, round(full.eval_every * epochs / full.epochs))
    return values


def trial_options(model_cls: type[TrainableModel], values: dict[str, Any], trial_epochs: int,
                  limits: dict[str, Any]) -> tuple[Any, Any]:
    """``(full, trial)``: the full-length options of ``values`` (what ``--export-best``
    writes), and the options the trial trains with (shortened to ``trial_epochs`` epochs
    unless 0, with the per-trial ``limits``)."""
    full = model_cls.make_options(None, **values)
    short = shortened(full, trial_epochs) if trial_epochs else {}
    trial = model_cls.make_options(None, **{**values, **short, **limits})
    return full, trial


def exported(options: Any) -> dict[str, Any]:
    """``options`` (a dataclass) as JSON-ready values without :data:`PER_TRIAL`."""
    values = dataclasses.asdict(options)
    return {k: v for k, v in values.items() if k not in PER_TRIAL}


def warmup_epochs(full_epochs: int, trial_epochs: int = 0) -> int:
    """Epochs a trial runs before the median pruner may stop it: a quarter of the trial's
    epochs (``trial_epochs``, or the full ``full_epochs``), at least 1."""
    return max(1, (trial_epochs or full_epochs) // 4)
