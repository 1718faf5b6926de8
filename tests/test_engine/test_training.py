"""The training engine: run folder, checkpoints, exact resume, NaN handling, tiling."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from torch import nn

from restorekit.api import Metric, TrainableModel
from restorekit.engine import (
    TrainConfig,
    TrainResult,
    enhance_tiled,
    load_trained,
    read_checkpoint,
    train,
)
from restorekit.engine import checkpoint as container
from restorekit.engine import state as ckpt
from restorekit.engine.callbacks import sample_grid
from restorekit.engine.monitor import CHECK_EVERY
from restorekit.engine.step import StepContextImpl
from restorekit.errors import CheckpointError, TrainingError, UsageError
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry


# -- a tiny data set and a tiny GAN-shaped model -----------------------------------------------
class TinyPairs:
    """Random 32x32 pairs: high is random, low a darker copy."""

    def __init__(self, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.names = [f"p{i}" for i in range(count)]
        self.highs = [rng.random((32, 32, 3), dtype=np.float32) for _ in range(count)]

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        return self.highs[i] * 0.3, self.highs[i]

    def describe(self) -> str:
        return f"tiny: {len(self)} pairs"

    def label(self, i: int) -> str:
        return self.names[i]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-10))


PSNR = Metric("psnr", _psnr, higher_is_better=True)
MAE = Metric("mae", lambda a, b: float(np.mean(np.abs(a - b))), higher_is_better=False)
METRICS = [PSNR, MAE]


@dataclass
class TinyOptions(TrainConfig):
    width: int = 4
    lr: float = 1e-2
    nan_at: int = -1  # step whose loss is NaN
    interrupt_at: int = -1  # step whose train_step raises KeyboardInterrupt


class Tiny(TrainableModel):
    name = "tiny"
    Options = TinyOptions

    def build(self, device: torch.device) -> None:
        w = self.options.width
        self.G = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(w, 3, 3, padding=1)).to(device)
        self.D = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2)).to(device)
        self.opts = {"G": torch.optim.Adam(self.G.parameters(), lr=self.options.lr),
                     "D": torch.optim.Adam(self.D.parameters(), lr=self.options.lr,
                                           betas=(0.5, 0.999))}

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.opts

    def on_epoch_start(self, epoch: int) -> None:
        for group in self.opts["G"].param_groups:
            group["lr"] = self.options.lr * 0.5 ** epoch

    def train_step(self, low, high, ctx):
        if ctx.step == self.options.interrupt_at:
            raise KeyboardInterrupt
        # Draws from torch's and numpy's global RNGs, which resume must restore.
        noisy = low + 0.01 * torch.randn_like(low) + 0.001 * float(np.random.rand())
        with ctx.autocast():
            fake = self.G(noisy)
            loss_g = (fake - high).abs().mean() + 0.01 * self.D(fake).mean()
        if ctx.step == self.options.nan_at:
            loss_g = loss_g * float("nan")
        ctx.backward_step(loss_g, "G")
        with ctx.autocast():
            loss_d = self.D(high).pow(2).mean() + (self.D(fake.detach()) - 1).pow(2).mean()
        ctx.backward_step(loss_d, "D")
        return {"g": loss_g.detach(), "d": loss_d.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return self.G(low).clamp(0, 1)


class Other(Tiny):
    name = "other"


MODELS = {"tiny": Tiny, "other": Other}
REGISTRY = Registry()
REGISTRY.items["models"].update(MODELS)

BASE = dict(epochs=3, batch_size=2, crop_size=16, log_every=1, num_samples=2, seed=3)


def make(cls: type[Tiny] = Tiny, **overrides) -> Tiny:
    return cls(TinyOptions(**{**BASE, **overrides}), Pipeline())


@pytest.fixture(autouse=True)
def cheap_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic baselines need the built-in preprocessors; score the identity only."""
    from restorekit import evaluate

    def baselines(pairs, metrics, *_, **__):
        return {"identity": evaluate.evaluate(pairs, None, metrics, progress=False)}

    monkeypatch.setattr(evaluate, "classic_baselines", baselines)


def run(run_dir: Path, model: Tiny | None = None, **kwargs) -> TrainResult:
    return train(model or make(), train_pairs=TinyPairs(6, 0), val_pairs=TinyPairs(3, 1),
                 test_pairs=TinyPairs(2, 2),
                 run_dir=run_dir, registry=REGISTRY, data_desc="tiny", metrics=METRICS,
                 **kwargs)


def all_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    return tensors


def assert_same_state(a: Path, b: Path) -> None:
    ta, tb = all_tensors(a), all_tensors(b)
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim.D.state.") for k in ta)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    from restorekit import evaluate

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "classic_baselines",
                   lambda pairs, metrics, *_, **__: {"identity": evaluate.evaluate(
                       pairs, None, metrics, progress=False)})
        run_dir = tmp_path_factory.mktemp("full") / "run"
        return run_dir, run(run_dir)


# -- tests -------------------------------------------------------------------------------------
def test_run_folder_contents(full_run: tuple[Path, TrainResult]) -> None:
    run_dir, result = full_run
    assert result.stopped == "completed" and result.epoch == 3 and result.step == 9
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "tiny" and config["options"]["epochs"] == 3
    assert config["data"] == "tiny" and config["preprocess"] == ""
    assert {"restorekit_version", "torch_version", "device", "started_at"} <= set(config)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all({"step", "psnr", "mae"} <= set(m) for m in metrics)
    losses = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 9 and {"epoch", "step", "g", "d", "lr", "lr_G", "lr_D"} <= set(losses[0])
    assert losses[3]["lr_G"] == pytest.approx(0.005)  # on_epoch_start halves it in epoch 2
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json",
                 "latest.json"):
        assert (run_dir / "checkpoints" / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    from PIL import Image

    with Image.open(run_dir / "samples" / "epoch_003.png") as im:
        assert im.size == (3 * 32, 2 * 32)
    assert "identity" in json.loads((run_dir / "baselines.json").read_text())
    report = (run_dir / "report.html").read_text()
    for text in ("psnr", "mae", "identity", "samples/epoch_003.png", "tiny"):
        assert text in report, text
    # The charts (matplotlib) are files of their own and inlined in the report, one SVG
    # group per curve.
    metrics_svg, losses_svg = ((run_dir / f"{n}.svg").read_text() for n in ("metrics", "losses"))
    assert metrics_svg.startswith("<svg") and losses_svg.startswith("<svg")
    assert 'id="curve-psnr"' in metrics_svg and 'id="reference-identity"' in metrics_svg
    assert 'id="curve-g"' in losses_svg and 'id="curve-d"' in losses_svg
    assert metrics_svg in report and losses_svg in report
    assert result.best is not None and result.best.metric == "psnr"
    assert result.best.value == max(m["psnr"] for m in metrics)


def test_evaluations_keep_their_intervals(full_run: tuple[Path, TrainResult]) -> None:
    """metrics.jsonl and baselines.json hold each mean's 95 % bootstrap interval over the
    images, and the report shows ``mean [low, high]`` (was: the means alone)."""
    from restorekit.engine.report import cell
    from restorekit.evaluate import bootstrap_interval

    run_dir, _ = full_run
    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").open()][-1]
    for name in ("psnr", "mae"):
        low, high = last["intervals"][name]
        assert low <= last[name] <= high
    pairs = TinyPairs(3, 1)
    identity = [_psnr(*pairs.pair(i)) for i in range(len(pairs))]
    row = json.loads((run_dir / "baselines.json").read_text())["identity"]
    assert row["psnr"] == pytest.approx(np.mean(identity))
    assert row["intervals"]["psnr"] == pytest.approx(list(bootstrap_interval(identity)))
    report = (run_dir / "report.html").read_text()
    low, high = row["intervals"]["psnr"]
    assert f"{cell(row['psnr'])} [{cell(low)}, {cell(high)}]" in report
    low, high = last["intervals"]["mae"]
    assert f"{cell(last['mae'])} [{cell(low)}, {cell(high)}]" in report


def test_checkpoint_is_self_describing(full_run: tuple[Path, TrainResult]) -> None:
    path = full_run[0] / "checkpoints" / "last.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["restorekit"])
        keys = set(f.keys())
    assert meta == json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == "tiny" and meta["epoch"] == 3 and meta["step"] == 9
    assert meta["step_in_epoch"] == 0 and meta["options"]["width"] == 4
    assert {"net.G.0.weight", "net.D.1.running_mean", "optim.G.state.0.exp_avg",
            "rng.torch"} <= keys
    assert meta["optimizers"]["D"]["param_groups"][0]["betas"] == [0.5, 0.999]
    pointer = json.loads((path.parent / "latest.json").read_text())
    assert pointer["file"] == "last.safetensors" and pointer["step"] == 9


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = make()
    a.build(torch.device("cpu"))
    ctx = StepContextImpl(torch.device("cpu"), a.optimizers(), precision="fp32")
    pairs = TinyPairs(2, 0)
    low, high = (torch.from_numpy(x).permute(2, 0, 1)[None] for x in pairs.pair(0))
    a.train_step(low, high, ctx)
    tensors, meta = ckpt.TrainState(a).capture()
    container.write_checkpoint(tmp_path / "c.safetensors", tensors, meta)
    b = make()
    b.build(torch.device("cpu"))
    loaded, meta2 = read_checkpoint(tmp_path / "c.safetensors")
    ckpt.restore_networks(tmp_path / "c.safetensors", loaded, b)
    ckpt.restore_optimizers(tmp_path / "c.safetensors", loaded, meta2, b)
    for name in ("G", "D"):
        for (k, va), vb in zip(a.networks()[name].state_dict().items(),
                               b.networks()[name].state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
        sa, sb = a.optimizers()[name].state_dict(), b.optimizers()[name].state_dict()
        for i in sa["state"]:
            for k, v in sa["state"][i].items():
                assert torch.equal(v, sb["state"][i][k])
    assert b.optimizers()["D"].param_groups[0]["betas"] == (0.5, 0.999)
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_after_max_steps_is_exact(tmp_path: Path,
                                         full_run: tuple[Path, TrainResult]) -> None:
    first = run(tmp_path / "r", make(max_steps=4))
    assert first.stopped == "max_steps" and first.step == 4
    meta = ckpt.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 1)
    second = run(tmp_path / "r", make(), resume=True)
    assert second.stopped == "completed" and second.step == 9
    assert_same_state(full_run[0], tmp_path / "r")
    steps = [json.loads(x)["step"] for x in (tmp_path / "r" / "losses.jsonl").open()]
    assert steps == list(range(1, 10))


def test_keyboard_interrupt_saves_and_resumes_exactly(
        tmp_path: Path, full_run: tuple[Path, TrainResult]) -> None:
    first = run(tmp_path / "r", make(interrupt_at=5))
    assert first.stopped == "interrupted" and first.step == 5
    assert not [t for t in threading.enumerate() if t.name == "restorekit-loader"]
    meta = ckpt.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert (meta["epoch"], meta["step"], meta["step_in_epoch"]) == (1, 5, 2)
    second = run(tmp_path / "r", make(), resume=True)
    assert second.step == 9
    assert_same_state(full_run[0], tmp_path / "r")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as info:
        run(tmp_path / "r", make(nan_at=3, checkpoint_every=1))
    message = str(info.value)
    assert "'g'" in message and "epoch 2" in message and "step 4" in message
    assert "last.safetensors" in message and "\n" not in message
    meta = ckpt.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert meta["step"] == 3
    model = load_trained(tmp_path / "r" / "checkpoints" / "last.safetensors", REGISTRY,
                         device="cpu")
    assert all(torch.isfinite(p).all() for p in model.G.parameters())


class Counted(Tiny):
    steps = 0

    def train_step(self, low, high, ctx):
        self.steps = ctx.step + 1
        return super().train_step(low, high, ctx)


@pytest.mark.parametrize(("log_every", "stopped_after"), [(4, 4), (0, CHECK_EVERY)])
def test_nan_loss_read_later_names_the_step_where_it_went_bad(
        tmp_path: Path, log_every: int, stopped_after: int) -> None:
    """Losses are checked on the device and read at the logging cadence (issue 20)."""
    model = make(Counted, nan_at=2, log_every=log_every, samples_per_epoch=40)
    with pytest.raises(TrainingError) as info:
        run(tmp_path / "r", model)
    assert str(info.value) == ("loss 'g' is nan at epoch 1, step 3; training stopped, no "
                               "checkpoint was saved yet")
    assert model.steps == stopped_after
    assert not (tmp_path / "r" / "checkpoints" / "last.safetensors").exists()


def test_nan_loss_at_an_epoch_end_is_never_evaluated_or_saved(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"^loss 'g' is nan at epoch 2, step 5; .*the "
                                            r"last good checkpoint is .*last.safetensors$"):
        run(tmp_path / "r", make(nan_at=4, log_every=4))
    assert ckpt.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")["step"] == 3
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1]


def test_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"net.G.0.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="model.pt.*pickle"):
        load_trained(path, REGISTRY, device="cpu")


def test_truncated_checkpoint_is_refused(tmp_path: Path,
                                         full_run: tuple[Path, TrainResult]) -> None:
    data = (full_run[0] / "checkpoints" / "last.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_trained(path, REGISTRY, device="cpu")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_trained(path, REGISTRY, device="cpu")


def test_wrong_model_or_shape_is_refused(tmp_path: Path,
                                         full_run: tuple[Path, TrainResult]) -> None:
    source = full_run[0] / "checkpoints" / "last.safetensors"
    tensors, meta = read_checkpoint(source)
    with pytest.raises(CheckpointError, match="'tiny'.*'other'"):
        ckpt.check_model(source, meta, make(Other))
    meta["options"]["width"] = 5
    container.write_checkpoint(tmp_path / "w.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="net.G.0.weight"):
        load_trained(tmp_path / "w.safetensors", REGISTRY, device="cpu")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_trained(tmp_path / "nothing-here", REGISTRY, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no checkpoint found"):
        load_trained(tmp_path / "empty", REGISTRY, device="cpu")


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run(tmp_path / "r", make(epochs=1, eval_every=0))
    (tmp_path / "r" / "old.txt").write_text("x")
    with pytest.raises(UsageError, match="--resume.*--overwrite"):
        run(tmp_path / "r", make(epochs=1))
    result = run(tmp_path / "r", make(epochs=1, eval_every=0), overwrite=True)
    assert result.step == 3 and not (tmp_path / "r" / "old.txt").exists()
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_folder_that_is_not_a_run_is_never_cleared(tmp_path: Path) -> None:
    """Issue 11: --overwrite used to delete any folder, photos included."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "old.txt").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        run(tmp_path / "r", make(epochs=1))
    with pytest.raises(UsageError, match="not a restorekit run folder.*refusing"):
        run(tmp_path / "r", make(epochs=1), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["old.txt"]
    # A config naming a model is no marker: still refused, still there.
    (tmp_path / "r" / "config.json").write_text('{"model": "tiny"}')
    with pytest.raises(UsageError, match="not a restorekit run folder.*refusing"):
        run(tmp_path / "r", make(epochs=1), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json", "old.txt"]


def test_load_trained_from_folder_and_file(full_run: tuple[Path, TrainResult]) -> None:
    run_dir = full_run[0]
    model = load_trained(run_dir, REGISTRY, device="cpu")
    assert isinstance(model, Tiny) and not model.G.training
    reference = all_tensors(run_dir)  # a run folder means its last checkpoint
    for key, value in model.G.state_dict().items():
        assert torch.equal(value, reference[f"net.G.{key}"])
    best = ckpt.read_metadata(run_dir / "checkpoints" / "best.safetensors")
    assert best["metrics"]["psnr"] == full_run[1].best.value
    image = TinyPairs(1, 5).pair(0)[0][:21, :17]
    assert model.enhance(image).shape == (21, 17, 3)
    last = load_trained(run_dir / "checkpoints" / "last.safetensors", REGISTRY, device="cpu")
    reference = all_tensors(run_dir)
    for key, value in last.G.state_dict().items():
        assert torch.equal(value, reference[f"net.G.{key}"])


def test_enhance_tiled_matches_whole_image() -> None:
    x = torch.rand(2, 3, 101, 77)
    for tile, overlap in ((32, 8), (40, 16), (64, 0)):
        out = enhance_tiled(lambda t: t, x, tile, overlap)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
        out = enhance_tiled(lambda t: t * 2 + 1, x, tile, overlap)
        torch.testing.assert_close(out, x * 2 + 1, atol=1e-5, rtol=0)
    calls = []
    assert enhance_tiled(lambda t: calls.append(t.shape) or t, x, 128).shape == x.shape
    assert calls == [x.shape]
    sizes = []
    enhance_tiled(lambda t: sizes.append(tuple(t.shape[-2:])) or t, x, 48, 16)
    assert max(max(s) for s in sizes) <= 48


def test_sample_grid_and_context_on_cpu() -> None:
    grid = sample_grid([[np.zeros((300, 200, 3))] * 3, [np.ones((40, 30, 3))] * 3])
    assert grid.shape == (256 + 40, 3 * 171, 3)
    ctx = StepContextImpl(torch.device("cpu"), {}, precision="fp32")
    with ctx.autocast():
        assert torch.ones(1).dtype == torch.float32
    with pytest.raises(TrainingError, match="unknown optimizer 'X'"):
        ctx.backward_step(torch.zeros(()), "X")
