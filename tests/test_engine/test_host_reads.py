"""Issue 20: a training step never waits for the device; the host reads back only at the
logging cadence and checkpoints (counted by restorekit.testing.HostReads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.engine import train
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry
from restorekit.testing import HostReads
from restorekit_pix2pixhd.model import Pix2PixHD


class Pairs:
    """Eight 40x40 pairs: low is a darker copy of high."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.names = [f"p{i}" for i in range(8)]
        self.highs = [rng.random((40, 40, 3), dtype=np.float32) for _ in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        return self.highs[i] * 0.3, self.highs[i]

    def describe(self) -> str:
        return "pairs"


READS = HostReads()


class Marked(Pix2PixHD):
    """Pix2PixHD whose reads are recorded under the number of the step in progress."""

    def train_step(self, low, high, ctx):
        READS.mark(ctx.step)
        return super().train_step(low, high, ctx)


def test_host_reads_in_a_step_are_the_methods_own() -> None:
    """The counter sees what a step would stall on (and only on this thread)."""
    t = torch.tensor([1.0, float("nan")])
    with HostReads() as reads:
        reads.mark("reads")
        t.tolist()
        float(t[0])
        bool(torch.isfinite(t).all())
        torch.equal(t, t)
        _ = t[torch.isfinite(t)]
        reads.mark("device only")
        torch.where(torch.isfinite(t), t, 0.0).sum().mul_(2)
    assert [r.split(" (")[0] for r in reads.at("reads")] == [
        "Tensor.tolist", "Tensor.__float__", "Tensor.__bool__", "aten.equal.default",
        "aten.index.Tensor"]
    assert all(r.endswith(f"({Path(__file__).relative_to(Path.cwd())}:{r.split(':')[-1]}")
               for r in reads.at("reads"))
    assert reads.at("device only") == []


@pytest.mark.parametrize(("precision", "fused"), [("fp32", True), ("fp32", False),
                                                  ("bf16", True), ("fp16", True)])
def test_training_steps_read_nothing_between_log_points(tmp_path: Path, precision: str,
                                                        fused: bool) -> None:
    """Was: every step copied its losses to the host (and so waited for the device)."""
    options = Pix2PixHD.make_options(
        "quick", ngf=4, ndf=4, n_downsample_global=1, n_blocks_global=1, n_layers_D=1,
        num_D=1, crop_size=24, batch_size=1, samples_per_epoch=8, niter=1, niter_decay=0,
        log_every=4, device="cpu", precision=precision, fused=fused)
    registry = Registry()
    registry.items["models"]["pix2pixhd"] = Marked
    READS.reads.clear()
    READS.mark(None)
    with READS:
        result = train(Marked(options, Pipeline()), train_pairs=Pairs(), test_pairs=None,
                       run_dir=tmp_path / "run", registry=registry, metrics=[])
    assert result.step == 8
    logged = [k for k in range(8) if READS.at(k)]
    # After step 4 the losses are logged (one copy of the window's sums); after step 8
    # too, and the epoch ends with a checkpoint. Nothing else reads the device.
    assert logged == [3, 7], {k: READS.at(k) for k in range(8)}
    assert len(READS.at(3)) == 1 and "monitor.py" in READS.at(3)[0]
