"""One training step: the context a model's ``train_step`` receives, eager or CUDA-graphed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from restorekit.api import TrainableModel
from restorekit.engine import distributed, graphed, optimizers
from restorekit.engine.config import TrainConfig
from restorekit.errors import TrainingError, warn


class StepContextImpl:
    """The :class:`~restorekit.api.StepContext` a model's ``train_step`` receives."""

    def __init__(self, device: torch.device, optimizers: dict[str, torch.optim.Optimizer],
                 precision: str = "fp32", dist: distributed.Distributed | None = None) -> None:
        self.device = device
        self.dist = dist or distributed.current()  # averages gradients across ranks
        self.epoch = 0
        self.step = 0
        self.precision = precision
        self.optimizers = optimizers
        # Loss scaling only for float16 (bfloat16 has float32's exponent range).
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=precision == "fp16")
                        for name in optimizers}
        self.updates = 0  # optimiser steps taken in the current train_step
        self.graphed = False  # the step is captured in a CUDA graph (engine.graphed)
        self.autocasts = 0  # times the model entered autocast() (see check_first_step)
        self.checked = False  # check_first_step has run

    @property
    def amp(self) -> bool:
        """Whether the step runs under autocast (bf16 or fp16)."""
        return self.precision != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bfloat16 or float16 as ``precision`` says; a no-op for fp32."""
        self.autocasts += 1
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # A captured step must cast its weights inside the graph, not reuse cached casts.
        return torch.autocast(device_type=self.device.type, dtype=dtype,
                              cache_enabled=not self.graphed)

    def backward_step(self, loss: torch.Tensor, optimizer: str) -> None:
        """Zero the named optimiser's gradients, backpropagate ``loss``, step (scaled)."""
        if optimizer not in self.optimizers:
            known = ", ".join(sorted(self.optimizers)) or "none"
            raise TrainingError(f"train_step asked for unknown optimizer {optimizer!r} "
                                f"(known: {known})")
        opt, scaler = self.optimizers[optimizer], self.scalers[optimizer]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self.dist.average_gradients(opt)
        scaler.step(opt)
        scaler.update()
        self.updates += 1


def make_step_context(model: TrainableModel, cfg: TrainConfig, device: torch.device,
                      precision: str, dist: distributed.Distributed | None = None
                      ) -> StepContextImpl:
    """The step context for a built ``model``, its optimisers run as ``cfg`` says
    (``fused_optimizer``, ``cuda_graph``)."""
    ctx = StepContextImpl(device, dict(model.optimizers()), precision, dist)
    if cfg.fused_optimizer:
        fused = optimizers.use_fused(ctx.optimizers)
        unfused = [f"{name} ({type(opt).__name__})" for name, opt in ctx.optimizers.items()
                   if name not in fused]
        if unfused:
            warn(f"--fused-optimizer: optimizer(s) {', '.join(unfused)} of model "
                 f"{type(model).name!r} have no fused kernel here; they run unfused", once=True)
    if cfg.cuda_graph:
        graphed.prepare(device, precision, ctx.dist.world_size, ctx.optimizers)
        ctx.graphed = True
    return ctx


def check_first_step(model: TrainableModel, ctx: StepContextImpl) -> None:
    """After the first training step: one warning line for each engine option the model's
    ``train_step`` bypassed, so that none of them is silently a no-op (``--precision`` needs
    the forward pass under ``ctx.autocast()``; fp16 loss scaling and gradient averaging
    across processes need ``ctx.backward_step``)."""
    if ctx.checked:
        return
    ctx.checked = True
    name = type(model).name
    if ctx.amp and not ctx.autocasts:
        warn(f"--precision {ctx.precision}: model {name!r} runs its training step outside "
             f"ctx.autocast(), so it trains in fp32")
    if not ctx.updates and ctx.optimizers:
        needs = [what for what, used in (("fp16 loss scaling", ctx.precision == "fp16"),
                                         ("gradient averaging across processes",
                                          ctx.dist.world_size > 1)) if used]
        if needs:
            warn(f"model {name!r} steps its optimisers without ctx.backward_step(), so it "
                 f"runs without {' and '.join(needs)}")


def step_function(model: TrainableModel, ctx: StepContextImpl
                  ) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """``(low, high) -> losses``: one training step, replayed from a CUDA graph when
    ``ctx.graphed``."""
    if ctx.graphed:
        return graphed.GraphedStep(model, ctx)
    return lambda low, high: model.train_step(low, high, ctx)


__all__ = ["StepContextImpl", "check_first_step", "make_step_context", "step_function"]
