"""Fixtures of the tuning tests: a tiny Pix2PixHD space and a tiny LOL-layout folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

TINY_MODEL = """
[model]
only = ["lr", "upsample"]
ngf = 4
n_downsample_global = 2
n_blocks_global = 1
ndf = 4
n_layers_D = 2
num_D = 1
crop_size = 32
batch_size = 2
samples_per_epoch = 4
niter = 2
niter_decay = 1
fused = false
num_samples = 1
eval_every = 1
"""

TINY_PREPROCESS = """
[preprocess]
max_steps = 1
candidates = ["autogamma", "gamma"]
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """A --space file: a few-thousand-parameter Pix2PixHD, lr and upsample searched."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_MODEL + TINY_PREPROCESS)
    return path


@pytest.fixture
def lol(tmp_path: Path) -> Path:
    """A LOL-layout folder with tiny 40x48 pairs (5 train, 2 test)."""
    rng = np.random.default_rng(0)
    from restorekit.data import write_image

    for split, count in (("our485", 5), ("eval15", 2)):
        for i in range(count):
            high = rng.uniform(0.2, 0.9, (40, 48, 3)).astype(np.float32)
            write_image(tmp_path / "LOL" / split / "high" / f"{i}.png", high)
            write_image(tmp_path / "LOL" / split / "low" / f"{i}.png", high * 0.15)
    return tmp_path / "LOL"


@pytest.fixture
def tune_argv() -> Callable[..., list[str]]:
    """``tune_argv(space, studies, *extra)``: ``restorekit tune pix2pixhd`` argv with tiny
    CPU trials."""

    def argv(space: Path, studies: Path, *extra: str) -> list[str]:
        return ["tune", "pix2pixhd", "--space", str(space), "--studies-dir", str(studies),
                "--max-steps", "2", "--device", "cpu", "--seed", "0", *extra]

    return argv
