"""How the engine runs optimisers: fused kernels, capturable state, the CUDA-graph step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import (
    Tiny,
    TinyPairs,
    all_tensors,
    cheap_baselines,  # noqa: F401  (autouse fixture)
    make,
    run,
)
from torch import nn

from restorekit.engine import graphed, optimizers
from restorekit.engine.step import make_step_context, step_function
from restorekit.errors import TrainingError, UsageError

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _adam(fused: bool) -> tuple[nn.Module, torch.optim.Adam]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.5, 0.999))
    if fused:
        assert optimizers.use_fused({"G": opt}) == ["G"]
    return net, opt


def test_fused_adam_follows_the_plain_one() -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    nets = {}
    for fused in (False, True):
        net, opt = _adam(fused)
        for _ in range(5):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        nets[fused] = net
        assert opt.param_groups[0]["fused"] is fused or (not fused and not opt.param_groups[0][
            "fused"])
    for a, b in zip(nets[False].parameters(), nets[True].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_only_optimizers_with_fused_kernels_switch() -> None:
    net = nn.Linear(2, 2)
    opts = {"adam": torch.optim.Adam(net.parameters()),
            "lbfgs": torch.optim.LBFGS(net.parameters())}
    assert optimizers.use_fused(opts) == ["adam"]
    assert optimizers.make_capturable(opts) == ["lbfgs"]
    assert opts["adam"].param_groups[0]["capturable"] is True


def test_fp16_loss_scaling_with_a_fused_optimizer_reads_nothing_on_the_host() -> None:
    """Was: an optimiser switched to fused after construction left GradScaler on its path
    that reads the inf check on the host every step. The fused kernel's own check takes the
    same steps, bit for bit, the skipped ones included."""
    from restorekit.engine.step import StepContextImpl
    from restorekit.testing import HostReads

    def steps(host_check: bool) -> tuple[list[torch.Tensor], list[str]]:
        net, opt = _adam(fused=True)
        if host_check:  # what GradScaler did before use_fused marked the optimiser
            opt._step_supports_amp_scaling = False
        ctx = StepContextImpl(torch.device("cpu"), {"G": opt}, precision="fp16")
        ctx.scalers["G"] = torch.amp.GradScaler("cpu", init_scale=2.0**22)
        gen = torch.Generator().manual_seed(1)
        with HostReads() as reads:
            for i in range(12):
                x = torch.rand(2, 3, 8, 8, generator=gen)
                with ctx.autocast():
                    loss = net(x).square().mean() * (1e4 if i == 8 else 1.0)  # overflows
                ctx.backward_step(loss, "G")
        # Steps skipped (the scale halved on each) and steps taken.
        assert 2.0**12 < ctx.scalers["G"].get_scale() < 2.0**20
        return [p.detach().clone() for p in net.parameters()], [r for _, r in reads.reads]

    start = [p.detach().clone() for p in _adam(fused=True)[0].parameters()]
    plain, reads = steps(host_check=True)
    assert not any(torch.equal(a, b) for a, b in zip(start, plain, strict=True))
    assert len(reads) == 12  # one per step
    fused, reads = steps(host_check=False)
    assert reads == []
    for a, b in zip(plain, fused, strict=True):
        assert torch.equal(a, b)


def test_training_with_and_without_fused_optimizer_agree(tmp_path: Path) -> None:
    run(tmp_path / "plain", make(fused_optimizer=False, max_steps=4))
    run(tmp_path / "fused", make(fused_optimizer=True, max_steps=4))
    a, b = all_tensors(tmp_path / "plain"), all_tensors(tmp_path / "fused")
    assert sorted(a) == sorted(b)
    # D's convolution bias feeds a BatchNorm, so its true gradient is 0 and what it gets is
    # rounding noise, which Adam scales to steps of size lr (g / sqrt(v) ~ +-1): plain and
    # fused kernels round differently, so that value is arbitrary in both, and so is the
    # BatchNorm's running mean, which averages the convolution's output, bias included.
    noise_only = {"net.D.0.bias", "net.D.1.running_mean"}
    for key in a:
        if key.startswith("net.") and key not in noise_only:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_resume_with_other_optimizer_flags(tmp_path: Path) -> None:
    # The flags belong to the run: a fused run resumes unfused and back.
    first = run(tmp_path / "r", make(fused_optimizer=True, max_steps=3))
    assert first.step == 3
    second = run(tmp_path / "r", make(fused_optimizer=False, max_steps=6), resume=True)
    assert second.step == 6
    third = run(tmp_path / "r", make(fused_optimizer=True), resume=True)
    assert third.stopped == "completed" and third.step == 9


def test_cuda_graph_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--cuda-graph: needs a CUDA device"):
            run(tmp_path / "cpu", make(cuda_graph=True, device="cpu"))
        assert not (tmp_path / "cpu").exists()
    cuda = torch.device("cuda")
    opts = {"G": torch.optim.Adam(nn.Linear(2, 2).parameters())}
    with pytest.raises(UsageError, match="fp16 loss scaling synchronises"):
        graphed.prepare(cuda, "fp16", 1, opts)
    with pytest.raises(UsageError, match="not with several processes"):
        graphed.prepare(cuda, "bf16", 2, opts)
    with pytest.raises(UsageError, match=r"optimizer\(s\) L cannot be captured"):
        graphed.prepare(cuda, "fp32", 1,
                                {"L": torch.optim.LBFGS(nn.Linear(2, 2).parameters())})


class Steady(Tiny):
    """Tiny without its random noise: Python-side randomness (numpy) would be a constant in a
    captured step, so a graph could not replay the eager steps exactly."""

    name = "steady"

    def train_step(self, low, high, ctx):
        with ctx.autocast():
            fake = self.G(low)
            loss_g = (fake - high).abs().mean() + 0.01 * self.D(fake).mean()
        ctx.backward_step(loss_g, "G")
        with ctx.autocast():
            loss_d = self.D(high).pow(2).mean() + (self.D(fake.detach()) - 1).pow(2).mean()
        ctx.backward_step(loss_d, "D")
        return {"g": loss_g.detach(), "d": loss_d.detach()}


@cuda_only
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_matches_eager(precision: str) -> None:
    # Same model, same batches: the replayed step gives the eager step's losses and weights;
    # a learning-rate change recaptures, a batch of another shape runs eagerly.
    device = torch.device("cuda")
    pairs = TinyPairs(4, 0)
    batches = [torch.tensor(pairs.pair(i % 4)[j]).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
               for i in range(8) for j in (0, 1)]
    batches = [(batches[2 * i].to(device), batches[2 * i + 1].to(device)) for i in range(8)]
    results = {}
    for cuda_graph in (False, True):
        torch.manual_seed(0)
        model = make(Steady, cuda_graph=cuda_graph, device="cuda", precision=precision)
        model.build(device)
        ctx = make_step_context(model, model.options, device, precision)
        step = step_function(model, ctx)
        losses = []
        for i, (low, high) in enumerate(batches):
            if i == 6:
                for group in model.optimizers()["G"].param_groups:
                    group["lr"] *= 0.5
            losses.append({k: float(v) for k, v in step(low, high).items()})
        losses.append({k: float(v) for k, v in step(low[:1], high[:1]).items()})
        results[cuda_graph] = (losses, [p.detach().clone() for p in model.G.parameters()])
        if cuda_graph:
            # Warm-up, capture at step 3, recapture at the learning-rate change (step 6).
            assert (step.captures, step.replays) == (2, 8 - graphed.WARMUP_STEPS)
    tol = 1e-5 if precision == "fp32" else 2e-2
    for a, b in zip(results[False][0], results[True][0], strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), (k, a[k], b[k])
    for a, b in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


def test_a_step_that_cannot_be_captured_is_one_clear_error(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # What torch.cuda.graph raises on a host sync inside the step becomes one TrainingError
    # naming the option (no CUDA needed: the capture is stubbed where it fails).
    def refuse(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\n"
                           "CUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    model = make(Steady)
    model.build(torch.device("cpu"))
    ctx = make_step_context(model, model.options, torch.device("cpu"), "fp32")
    step = graphed.GraphedStep(model, ctx)
    step.eager_runs = graphed.WARMUP_STEPS  # warmed up: the next call captures
    low = torch.rand(2, 3, 16, 16)
    with pytest.raises(TrainingError, match="--cuda-graph: the training step cannot be "
                                            "captured") as info:
        step(low, low)
    assert "\n" not in str(info.value) and "without --cuda-graph" in str(info.value)
