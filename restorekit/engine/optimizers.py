"""How the engine runs the optimisers a model builds: implementation flags, never the maths.

A model builds its optimisers in ``build``; the engine then chooses how they execute:

* ``fused``: torch's fused kernels (one kernel per step for all of an optimiser's
  parameters, CPU and CUDA) where the optimiser has them (Adam, AdamW, SGD, ...), instead of
  one small kernel per parameter and operation.
* ``capturable``: step counters kept on the device, so that a CUDA graph can capture the
  optimiser step (``--cuda-graph``).

These flags change nothing but rounding and belong to the run, not to its checkpoints: a run
resumed with other flags loads the same state (:data:`IMPLEMENTATION_FLAGS` are taken from
the running optimiser when a checkpoint is loaded).
"""

from __future__ import annotations

import torch

IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")
"""Param-group keys that say how an optimiser runs rather than what it computes."""


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def can_fuse(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` has a fused kernel for its parameters (floating point, CPU or CUDA)."""
    if "fused" not in opt.defaults or any(g.get("differentiable") for g in opt.param_groups):
        return False
    params = _params(opt)
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def use_fused(optimizers: dict[str, torch.optim.Optimizer]) -> list[str]:
    """Switch every optimiser that can to torch's fused kernels; returns their names.

    Must run before the first step (or after loading a checkpoint, which then moves the step
    counters to the device).
    """
    switched = []
    for name, opt in optimizers.items():
        if can_fuse(opt):
            for group in opt.param_groups:
                group["fused"], group["foreach"] = True, None
            # As the constructor sets it for fused=True: fp16's GradScaler then leaves the
            # inf check to the fused kernel instead of reading it on the host every step.
            opt._step_supports_amp_scaling = True
            switched.append(name)
    return switched


def make_capturable(optimizers: dict[str, torch.optim.Optimizer]) -> list[str]:
    """Keep the step counters of every optimiser on its parameters' device, so that a CUDA
    graph can capture the step; returns the names of optimisers that cannot be captured."""
    refused = []
    for name, opt in optimizers.items():
        if "capturable" not in opt.defaults:
            refused.append(name)
            continue
        for group in opt.param_groups:
            group["capturable"] = True
            for p in group["params"]:
                state = opt.state.get(p, {})
                step = state.get("step")
                if isinstance(step, torch.Tensor) and step.device != p.device:
                    state["step"] = step.to(p.device, torch.float32)
    return refused
