"""Benchmark: one Pix2PixHD training step (quick preset) with and without the fused blocks.

Run: pytest benchmarks/test_train_step.py --benchmark-only. The batch is fixed and seeded;
each round is one full G-then-D step (forward, backward, Adam) as ``--train`` runs it.
"""

from __future__ import annotations

import pytest
import torch

from restorekit.pipeline import Pipeline
from restorekit_pix2pixhd.model import Pix2PixHD


class _Step:
    """The engine's StepContext, reduced to what the step needs (fp32, no autocast)."""

    def __init__(self, model: Pix2PixHD, device: torch.device) -> None:
        self.model, self.device, self.epoch, self.step = model, device, 0, 0

    def autocast(self):
        return torch.autocast(self.device.type, enabled=False)

    def backward_step(self, loss: torch.Tensor, name: str) -> None:
        opt = self.model.optimizers()[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_quick_preset_train_step(benchmark, restorekit_ops, device, fused):
    torch.manual_seed(0)
    dev = torch.device(device)
    options = Pix2PixHD.make_options("quick", fused=fused)
    model = Pix2PixHD(options, Pipeline())
    model.build(dev)
    size, n = options.crop_size, options.batch_size
    low = (torch.rand(n, 3, size, size, device=dev) * 0.2)
    high = torch.rand(n, 3, size, size, device=dev)
    ctx = _Step(model, dev)
    for _ in range(2):  # warm-up (allocator, first-call dispatch)
        model.train_step(low, high, ctx)
    benchmark.group = f"train-step quick {device}"
    benchmark.extra_info.update(case="train_step", impl="fused" if fused else "eager",
                                mode="fwdbwd", shape="quick", device=device)
    benchmark.pedantic(model.train_step, args=(low, high, ctx), rounds=15, iterations=1)
