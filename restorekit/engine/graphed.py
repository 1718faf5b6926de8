"""A model's training step captured in a CUDA graph and replayed (``--cuda-graph``).

A Pix2PixHD step on a GPU launches hundreds of small kernels, and the GPU idles while the CPU
issues them. Captured once, the whole step (forward, losses, backward, both optimiser steps)
replays with one launch. A graph holds fixed addresses and shapes, so:

* the step's inputs are copied into static buffers before each replay;
* optimisers keep their step counters on the device (:func:`optimizers.make_capturable`), and
  a learning-rate change (baked into the graph as a constant) means a new capture;
* the engine's batches all have one shape (an epoch is cut into whole batches, see
  ``Distributed.shard``); a batch of another shape, from a caller of its own, runs eagerly
  if smaller and is captured anew if larger;
* fp16's loss scaling and gradient averaging across processes synchronise with the CPU, so
  ``--cuda-graph`` takes fp32 or bf16 in one process (checked by :func:`prepare`).

Before the first capture the step runs :data:`WARMUP_STEPS` times eagerly on a side stream
(lazy initialisation, cuDNN's algorithm search), as PyTorch's CUDA-graph guide asks.
"""

from __future__ import annotations

from typing import Any

import torch

from restorekit.engine.optimizers import make_capturable
from restorekit.errors import TrainingError, UsageError, one_line

WARMUP_STEPS = 3


def prepare(device: torch.device, precision: str, world_size: int,
                    optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Make the optimisers capturable, or a one-line ``UsageError`` when ``--cuda-graph``
    cannot capture this run's step."""
    if device.type != "cuda":
        raise UsageError(f"--cuda-graph: needs a CUDA device (training runs on {device})")
    if precision == "fp16":
        raise UsageError("--cuda-graph: fp16 loss scaling synchronises with the CPU every "
                         "step; use --precision fp32 or bf16")
    if world_size > 1:
        raise UsageError("--cuda-graph: not with several processes (gradient averaging runs "
                         "between the backward and the optimiser steps)")
    refused = make_capturable(optimizers)
    if refused:
        raise UsageError(f"--cuda-graph: optimizer(s) {', '.join(refused)} cannot be captured "
                         "(no capturable mode)")


class GraphedStep:
    """``model.train_step(low, high, ctx)``, replayed from a CUDA graph where it can be."""

    def __init__(self, model: Any, ctx: Any) -> None:
        self.model, self.ctx = model, ctx
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.eager_runs = 0
        self.captures = 0
        self.replays = 0
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._outputs: dict[str, torch.Tensor] = {}
        self._updates = 0

    def _key(self, low: torch.Tensor, high: torch.Tensor) -> tuple:
        lrs = tuple(float(g["lr"]) for opt in self.ctx.optimizers.values()
                    for g in opt.param_groups)
        return (tuple(low.shape), tuple(high.shape), low.dtype, high.dtype, lrs)

    def __call__(self, low: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        key = self._key(low, high)
        if key != self.key:
            if self.key is not None and key[:4] != self.key[:4] and low.shape[0] <= self.key[0][0]:
                return self._eager(low, high)  # a smaller batch than the one captured
            # The first step, a new learning rate, or a larger batch than the one captured.
            self.graph, self.key = None, key
        if self.graph is None:
            if self.eager_runs < WARMUP_STEPS:
                return self._warmup(low, high)
            self._capture(low, high)
        assert self._inputs is not None
        self._inputs[0].copy_(low)
        self._inputs[1].copy_(high)
        assert self.graph is not None
        self.graph.replay()
        self.replays += 1
        self.ctx.updates = self._updates
        return {k: v.clone() for k, v in self._outputs.items()}

    def _eager(self, low: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.train_step(low, high, self.ctx)

    def _warmup(self, low: torch.Tensor, high: torch.Tensor) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self._eager(low, high)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_runs += 1
        return out

    def _capture(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Record one step; nothing runs until the first replay (which is this batch's)."""
        self.graph = None
        self._outputs = {}
        torch.cuda.synchronize()
        self._inputs = (low.clone(), high.clone())
        for opt in self.ctx.optimizers.values():
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        self.ctx.updates = 0
        try:
            # thread_local: the data loader's pin-memory thread may call CUDA during capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._outputs = self.model.train_step(*self._inputs, self.ctx)
        except RuntimeError as exc:  # e.g. a host sync or an uncapturable op in the step
            raise TrainingError(f"--cuda-graph: the training step cannot be captured in a CUDA "
                                f"graph ({one_line(exc, with_type=False)[:300]}); train "
                                f"without --cuda-graph") from None
        self._updates = self.ctx.updates
        self.graph = graph
        self.captures += 1
