"""TrainState: what a checkpoint holds, its format versions, best by any metric, callbacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import (  # noqa: F401 - fixtures are found by name
    MAE,
    METRICS,
    PSNR,
    REGISTRY,
    Tiny,
    TinyPairs,
    all_tensors,
    assert_same_state,
    cheap_baselines,
    full_run,
    make,
    run,
)

from restorekit.engine import TrainResult, load_trained, read_checkpoint, train
from restorekit.engine import checkpoint as container
from restorekit.engine import state as st
from restorekit.engine.callbacks import Callback
from restorekit.errors import CheckpointError, UsageError
from restorekit.plugins import Registry

FIXTURES = Path(__file__).parent / "data"


# -- format versions ---------------------------------------------------------------------------
def test_a_checkpoint_of_the_previous_format_resumes_bit_exactly(tmp_path: Path) -> None:
    """v1-tiny-step4 was written by the code before TrainState (format 1, ``best_psnr``), in
    a one-thread process: the migration reads it and the resumed run ends where an
    uninterrupted one-thread run does (CPU sums are bit-exact only at one thread count)."""
    old = FIXTURES / "v1-tiny-step4.safetensors"
    assert container.read_header(old)["format"] == 1
    assert "best_psnr" in container.read_header(old)
    meta = st.read_metadata(old)
    assert meta["format"] == st.FORMAT_VERSION and "best_psnr" not in meta
    assert meta["best"] == {"metric": "psnr", "higher_is_better": True,
                            "value": container.read_header(old)["best_psnr"], "step": None}
    folder = tmp_path / "r" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(old, folder / "last.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tmp_path / "full", make())
        result = run(tmp_path / "r", make(), resume=True)
    finally:
        torch.set_num_threads(threads)
    assert result.stopped == "completed" and result.step == 9
    assert_same_state(tmp_path / "full", tmp_path / "r")
    assert result.best is not None and result.best.metric == "psnr"


def test_a_newer_format_is_one_line(tmp_path: Path,
                                    full_run: tuple[Path, TrainResult]) -> None:  # noqa: F811
    tensors, meta = read_checkpoint(full_run[0] / "checkpoints" / "last.safetensors")
    meta["format"] = st.FORMAT_VERSION + 1
    path = tmp_path / "new.safetensors"
    container.write_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError) as info:
        load_trained(path, REGISTRY, device="cpu")
    message = str(info.value)
    assert message.startswith(f"{path}: checkpoint format {st.FORMAT_VERSION + 1} is newer")
    assert message.endswith("upgrade restorekit") and "\n" not in message


def test_migrations_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook: MIGRATIONS[v] takes (tensors, meta) of version v to v + 1, one at a time."""
    seen = []
    monkeypatch.setattr(st, "FORMAT_VERSION", 3)
    monkeypatch.setitem(st.MIGRATIONS, 2, lambda tensors, meta: seen.append(
        ("2->3", "best" in meta)) or meta.update(renamed=True))
    meta = {"format": 1, "model": "tiny", "best_psnr": 3.0}
    st.upgrade(tmp_path, {}, meta)
    assert seen == [("2->3", True)] and meta["renamed"] and meta["format"] == 3


# -- RNG ---------------------------------------------------------------------------------------
def test_cuda_rng_states_are_restored_in_device_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: sorted by name, so rng.cuda.10 came before rng.cuda.2 on a 12-GPU machine."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    for i in range(12):
        tensors[f"rng.cuda.{i}"] = torch.full((4,), i, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: restored.extend(int(s[0]) for s in states))
    st.restore_rng(tensors, st.capture_rng({}))
    assert restored == list(range(12))


# -- best by any metric ------------------------------------------------------------------------
def _best_of(run_dir: Path) -> dict:
    return st.read_metadata(run_dir / "checkpoints" / "best.safetensors")["best"]


def test_best_without_psnr_uses_the_first_metric(tmp_path: Path) -> None:
    """Was: best was PSNR only, so with `--metrics ssim` no best checkpoint was written."""
    result = train(make(epochs=2), train_pairs=TinyPairs(6, 0),
                   val_pairs=TinyPairs(3, 1), test_pairs=None,
                   run_dir=tmp_path / "r", registry=REGISTRY, metrics=[MAE])
    logged = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").open()]
    lowest = min(logged, key=lambda r: r["mae"])
    assert result.best is not None and result.best.metric == "mae"
    assert (result.best.value, result.best.step) == (lowest["mae"], lowest["step"])
    assert _best_of(tmp_path / "r") == {"metric": "mae", "higher_is_better": False,
                                        "value": lowest["mae"], "step": lowest["step"]}
    assert result.best_checkpoint == tmp_path / "r" / "checkpoints" / "best.safetensors"


def test_select_metric_picks_the_metric_and_its_direction(tmp_path: Path) -> None:
    result = run(tmp_path / "r", make(epochs=2, select_metric="mae"))
    assert result.best is not None and result.best.metric == "mae"
    assert not result.best.higher_is_better
    with pytest.raises(UsageError, match=r"^--select-metric: 'lpips' is not evaluated "
                                         r"\(metrics: psnr, mae\); add it to --metrics$"):
        run(tmp_path / "bad", make(epochs=1, select_metric="lpips"))


def test_best_is_never_a_statistic_without_direction(tmp_path: Path) -> None:
    """A no-reference statistic (mean brightness) has no better direction: it is skipped
    by default and refused by name (was: taken as lower-is-better)."""
    from restorekit.api import NoReferenceMetric

    brightness = NoReferenceMetric("brightness", lambda out: float(out.mean()),
                                   higher_is_better=None)
    result = train(make(epochs=1), train_pairs=TinyPairs(6, 0),
                   val_pairs=TinyPairs(3, 1), test_pairs=None,
                   run_dir=tmp_path / "r", registry=REGISTRY, metrics=[brightness, MAE])
    assert result.best is not None and result.best.metric == "mae"
    with pytest.raises(UsageError, match=r"^--select-metric: 'brightness' is a statistic with "
                                         r"no better direction; choose one of mae$"):
        train(make(epochs=1, select_metric="brightness"), train_pairs=TinyPairs(6, 0),
              val_pairs=TinyPairs(3, 1), run_dir=tmp_path / "b", registry=REGISTRY,
              metrics=[brightness, MAE])


def test_a_new_best_is_its_own_file(full_run: tuple[Path, TrainResult]) -> None:  # noqa: F811
    """best.safetensors is never the same file as last (a damaged last leaves it usable)."""
    folder = full_run[0] / "checkpoints"
    best, last = folder / "best.safetensors", folder / "last.safetensors"
    assert best.stat().st_ino != last.stat().st_ino
    assert json.loads((folder / "best.json").read_text())["best"]["step"] == \
        full_run[1].best.step


# -- registered parts --------------------------------------------------------------------------
class Averaged:
    """A stand-in for an EMA of G's weights: state a model registers through stateful()."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.updates = 0

    def update(self) -> None:
        self.updates += 1
        for k, v in self.net.state_dict().items():
            self.shadow[k].mul_(0.9).add_(v.detach(), alpha=0.1)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": dict(self.shadow), "decay": (0.9, 0.1)}

    def load_state_dict(self, state: dict) -> None:
        assert state["decay"] == (0.9, 0.1)
        self.updates = state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


class WithAverage(Tiny):
    name = "tiny"

    def build(self, device: torch.device) -> None:
        super().build(device)
        self.average = Averaged(self.G)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.opts["D"], step_size=2)

    def stateful(self) -> dict:
        return {"ema": self.average, "schedule": self.schedule}

    def train_step(self, low, high, ctx):
        losses = super().train_step(low, high, ctx)
        self.average.update()
        self.schedule.step()
        return losses


def test_registered_parts_are_saved_and_resumed_exactly(tmp_path: Path) -> None:
    run(tmp_path / "full", make(WithAverage))
    run(tmp_path / "r", make(WithAverage, max_steps=4))
    run(tmp_path / "r", make(WithAverage), resume=True)
    full, resumed = all_tensors(tmp_path / "full"), all_tensors(tmp_path / "r")
    assert any(k.startswith("part.ema.shadow.") for k in full)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    meta = st.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert meta["parts"]["ema"]["updates"] == 9
    assert meta["parts"]["schedule"]["last_epoch"] == 9
    registry = Registry()
    registry.items["models"]["tiny"] = WithAverage
    loaded = load_trained(tmp_path / "r", registry, device="cpu")
    assert loaded.average.updates == 9
    assert torch.equal(loaded.average.shadow["0.weight"], full["part.ema.shadow.0.weight"])


# -- one read, samples from the evaluation ------------------------------------------------------
def test_resume_reads_the_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: read whole twice (the resume policy, the restore), each with a finiteness scan
    (and its metadata a third time for `--resume`)."""
    run(tmp_path / "r", make(max_steps=2))
    reads = []
    load_file = container.safetensors.torch.load_file
    monkeypatch.setattr(container.safetensors.torch, "load_file",
                        lambda *a, **k: reads.append(a[0]) or load_file(*a, **k))
    result = run(tmp_path / "r", make(), resume=True)
    assert result.step == 9 and reads == [str(tmp_path / "r" / "checkpoints" / "last.safetensors")]


def test_samples_reuse_the_evaluation_outputs(tmp_path: Path) -> None:
    """Was: each evaluation enhanced the first num_samples images a second time."""
    calls = []

    class Counting(Tiny):
        def enhance(self, image: np.ndarray, tile: int = 0) -> np.ndarray:
            calls.append(image.shape)
            return super().enhance(image, tile)

    train(make(Counting), train_pairs=TinyPairs(6, 0), val_pairs=TinyPairs(3, 1),
          test_pairs=None, run_dir=tmp_path / "r", registry=REGISTRY, metrics=METRICS)
    assert len(calls) == 3 * 3  # three evaluations of three pairs, nothing more
    assert len(list((tmp_path / "r" / "samples").glob("*.png"))) == 3


def test_a_callback_sees_the_events_and_can_stop_training(tmp_path: Path) -> None:
    events = []

    class Stopper(Callback):
        def on_evaluate(self, trainer, label, results) -> None:
            events.append((label, trainer.state.step, round(results["psnr"], 6)))
            if label == 2:
                raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        train(make(), train_pairs=TinyPairs(6, 0), val_pairs=TinyPairs(3, 1),
              test_pairs=None, run_dir=tmp_path / "r", registry=REGISTRY, metrics=[PSNR],
              callbacks=[Stopper()])
    assert [e[:2] for e in events] == [(1, 3), (2, 6)]
    assert st.read_metadata(tmp_path / "r" / "checkpoints" / "last.safetensors")["step"] == 3


def test_no_evaluation_pairs_no_evaluation(tmp_path: Path) -> None:
    result = train(make(epochs=1), train_pairs=TinyPairs(6, 0), test_pairs=None,
                   run_dir=tmp_path / "r", registry=REGISTRY, metrics=METRICS)
    assert result.step == 3 and result.metrics == {} and result.best is None
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    assert not (tmp_path / "r" / "baselines.json").exists()
    assert (tmp_path / "r" / "checkpoints" / "last.safetensors").is_file()
    assert not (tmp_path / "r" / "checkpoints" / "best.safetensors").exists()
