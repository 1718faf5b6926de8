"""A deterministic pipeline runs once per image of folder data, not once per training crop
(restorekit.data.cache), and its cache never serves a changed file or pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit import Preprocessor, hookimpl, plugins
from restorekit.data import TrainCrops, open_pairs, write_image
from restorekit.pipeline import Pipeline

CALLS: list[str] = []


def _lift(image: np.ndarray, amount: float = 0.5) -> np.ndarray:
    CALLS.append("lift")
    # Not an 8-bit value: the cache keeps float32 images exactly.
    return np.sqrt(image) * (1 - amount / 3) + 1e-4


def _jitter(image: np.ndarray) -> np.ndarray:
    CALLS.append("jitter")
    return image + np.random.default_rng().uniform(0, 0.01, image.shape).astype(np.float32)


class Counted:
    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("lift", _lift, params={"amount": 0.5}))
        register(Preprocessor("jitter", _jitter, deterministic=False))


@pytest.fixture
def registry() -> Iterator[object]:
    CALLS.clear()
    with plugins.registered(Counted(), name="counted"):
        yield plugins.get_registry()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A low/ and high/ folder with 3 pairs of 20x24 images."""
    rng = np.random.default_rng(0)
    for i in range(3):
        high = rng.uniform(0.2, 0.9, (20, 24, 3)).astype(np.float32)
        write_image(tmp_path / "data" / "high" / f"{i}.png", high)
        write_image(tmp_path / "data" / "low" / f"{i}.png", high * 0.2)
    return tmp_path / "data"


def _crops(data: Path, preprocess, cache: Path | None = None, epochs: int = 2,
           per_image: int = 4) -> list[dict]:
    pairs = open_pairs(data, "train", cache_dir=cache)
    crops = TrainCrops(pairs, 8, samples_per_epoch=per_image * len(pairs), seed=5,
                       preprocess=preprocess, vflip=True)
    items = []
    for epoch in range(epochs):
        crops.set_epoch(epoch)
        items += [crops[i] for i in range(len(crops))]
    return items


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["low"], y["low"]) and torch.equal(x["high"], y["high"])
        for x, y in zip(a, b, strict=True))


def test_the_pipeline_runs_once_per_image_and_the_crops_are_bit_identical(
        registry, folder: Path, tmp_path: Path) -> None:
    pipeline = Pipeline.parse("lift:amount=0.3", registry)
    # A plain function is never cached: the old path, once per crop (2 epochs x 12 crops).
    uncached = _crops(folder, lambda image: pipeline(image))
    assert len(CALLS) == 24
    CALLS.clear()
    cached = _crops(folder, pipeline, cache=tmp_path / "cache")
    assert len(CALLS) == 3  # once per image, over two epochs of four crops per image
    assert _same(cached, uncached)
    # Another process (a later trial) with the same pipeline reads the study's cache.
    CALLS.clear()
    again = _crops(folder, Pipeline.parse("lift:amount=0.3", registry), cache=tmp_path / "cache")
    assert CALLS == [] and _same(again, uncached)
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 3
    assert "lift (plugin 'counted'" in (entries[0].parent / "pipeline.txt").read_text()
    # In memory only (no folder, e.g. a plain run): once per image as well.
    CALLS.clear()
    assert _same(_crops(folder, pipeline), uncached) and len(CALLS) == 3


def test_a_changed_file_or_parameter_is_not_served_from_the_cache(
        registry, folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _crops(folder, Pipeline.parse("lift", registry), cache=cache, epochs=1)
    assert len(CALLS) == 3

    # A changed parameter is another pipeline: computed again, every image.
    CALLS.clear()
    stronger = Pipeline.parse("lift:amount=0.9", registry)
    other = _crops(folder, stronger, cache=cache, epochs=1)
    assert len(CALLS) == 3
    assert _same(other, _crops(folder, lambda image: stronger(image), epochs=1))

    # A changed file (new content, a later time): that image only, with its new content.
    low = folder / "low" / "1.png"
    before = os.stat(low)
    write_image(low, np.full((20, 24, 3), 0.5, np.float32))
    os.utime(low, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    CALLS.clear()
    fresh = _crops(folder, Pipeline.parse("lift", registry), cache=cache, epochs=1)
    assert len(CALLS) == 1
    plain = Pipeline.parse("lift", registry)
    assert _same(fresh, _crops(folder, lambda image: plain(image), epochs=1))

    # A damaged entry is computed again and replaced, never read.
    CALLS.clear()
    for entry in cache.rglob("*.npy"):
        entry.write_bytes(b"\x93NUMPY broken")
    assert _same(_crops(folder, Pipeline.parse("lift", registry), cache=cache, epochs=1),
                 fresh)
    assert len(CALLS) == 3


def test_a_step_that_is_not_deterministic_runs_for_every_crop(
        registry, folder: Path, tmp_path: Path) -> None:
    pipeline = Pipeline.parse("lift,jitter", registry)
    assert pipeline.cache_key() is None
    assert Pipeline.parse("lift", registry).cache_key() is not None
    _crops(folder, pipeline, cache=tmp_path / "cache", epochs=1)
    assert CALLS.count("jitter") == 12 and CALLS.count("lift") == 12
    assert not (tmp_path / "cache").exists()


def test_a_remembering_pipeline_preprocesses_each_distinct_image_once(registry) -> None:
    import pickle

    rng = np.random.default_rng(1)
    a, b = (rng.uniform(0, 1, (6, 5, 3)).astype(np.float32) for _ in range(2))
    plain = Pipeline.parse("lift", registry)
    remembering = Pipeline.parse("lift", registry).remember()
    expected = [plain(a), plain(b)]
    CALLS.clear()
    got = [remembering(image) for image in (a, b, a.copy(), b, a)]
    assert len(CALLS) == 2  # one per distinct image (a validation image at every evaluation)
    assert all(np.array_equal(g, expected[i % 2]) and g.dtype == np.float32
               for i, g in enumerate([got[0], got[1], got[2]]))
    got[0][:] = 0  # a caller changing its output does not change what is remembered
    assert np.array_equal(remembering(a), expected[0])
    copy = pickle.loads(pickle.dumps(remembering))  # e.g. a DataLoader worker's
    assert copy._memo is not None and not copy._memo.items
    jitter = Pipeline.parse("jitter", registry).remember()
    CALLS.clear()
    jitter(a), jitter(a)
    assert CALLS == ["jitter", "jitter"]  # a random step is never remembered


def test_a_study_says_that_the_embedded_set_preprocesses_every_crop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna")
    from restorekit.cli import main
    from restorekit.tune import study as study_module

    def interrupted(ctx):  # the message comes before the first trial; stop there
        def objective(trial):
            raise KeyboardInterrupt
        return objective

    monkeypatch.setattr(study_module, "_objective", interrupted)
    note = "so a preprocessing pipeline runs once per crop and cannot be cached"
    for grid, said in (("none;clahe", True), ("none", False)):
        assert main(["tune", "pix2pixhd", "--grid-preprocess", grid, "--device", "cpu",
                     "--studies-dir", str(tmp_path), "--study", grid]) == 130
        assert (note in capsys.readouterr().err) is said


def test_a_study_keeps_each_pipelines_training_images_in_its_cache_folder(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    optuna = pytest.importorskip("optuna")
    from restorekit.cli import main

    space = tmp_path / "tiny.toml"
    space.write_text("[model]\nngf = 4\nn_downsample_global = 2\nn_blocks_global = 1\n"
                     "ndf = 4\nn_layers_D = 2\nnum_D = 1\ncrop_size = 16\nbatch_size = 2\n"
                     "samples_per_epoch = 4\nniter = 1\nniter_decay = 0\nfused = false\n"
                     "num_samples = 1\n")
    studies = tmp_path / "studies"
    assert main(["tune", "pix2pixhd", "--space", str(space), "--data", str(folder),
                 "--grid-preprocess", "gamma:gamma=1.5", "--device", "cpu",
                 "--studies-dir", str(studies), "--study", "grid"]) == 0
    trial = optuna.load_study(study_name="grid",
                              storage=f"sqlite:///{studies / 'grid' / 'study.db'}").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    # 3 pairs: 2 train the model (1 is the validation split), each cached once.
    entries = list((studies / "grid" / "cache").glob("*/*.npy"))
    assert len(entries) == 2
    assert "gamma (plugin " in (entries[0].parent / "pipeline.txt").read_text()
    assert "gamma=1.5" in (entries[0].parent / "pipeline.txt").read_text()
