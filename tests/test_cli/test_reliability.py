"""Issue 11: nothing a user owns is lost, and every error is one line (the real CLI).

The data-loss cases run ``restorekit`` in a temporary folder and check the user's files are
still there, byte for byte. ``test_bad_inputs`` runs the CLI over a table of bad images,
options, checkpoints and outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from restorekit import Preprocessor, TrainableModel, hookimpl, testing
from restorekit.cli import main
from restorekit.data import write_image
from restorekit.engine import RunDir, TrainConfig, read_checkpoint


@dataclass
class TickOptions(TrainConfig):
    blowup_at: int = field(default=0, metadata={
        "help": "set the weights to inf after this step (0 = never)", "range": (0, None)})


class Tick(TrainableModel):
    """One convolution; ``--blowup-at N`` makes its weights inf after step N's update,
    while the loss of that step (computed before the update) is still finite."""

    name = "tick"
    description = "one convolution (tests)"
    Options = TickOptions

    def build(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.net = nn.Conv2d(3, 3, 3, padding=1).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-2)

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def train_step(self, low, high, ctx):
        loss = (self.enhance_tensor(low) - high).abs().mean()
        ctx.backward_step(loss, "net")
        if self.options.blowup_at and ctx.step + 1 == self.options.blowup_at:
            with torch.no_grad():
                self.net.weight.fill_(float("inf"))
        return {"l1": loss.detach()}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return self.net(low).clamp(0, 1)


@dataclass
class HogOptions(TrainConfig):
    cells: int = field(default=1, metadata={
        "help": "floats of an extra buffer (a plugin's size without an upper bound)",
        "range": (1, None)})


class Hog(Tick):
    """Tick with a buffer of ``--cells`` floats: a size no range stops."""

    name = "hog"
    Options = HogOptions

    def build(self, device: torch.device) -> None:
        super().build(device)
        self.net.register_buffer("cells", torch.empty(self.options.cells, device=device))


class TickPlugin:
    @hookimpl
    def register_models(self, register):
        register(Tick)
        register(Hog)


FAST = ["--data", "data", "--epochs", "1", "--batch-size", "1", "--crop-size", "16",
        "--samples-per-epoch", "8", "--num-samples", "1", "--device", "cpu",
        "--eval-every", "0"]
"""Options of a tick training on the ``data`` folder of :func:`tick` (seconds)."""


def write_pairs(root: Path, count: int = 3, size: tuple[int, int] = (24, 24)) -> None:
    from restorekit.data import write_image

    rng = np.random.default_rng(0)
    for i in range(count):
        high = rng.random((*size, 3)).astype(np.float32)
        write_image(root / "high" / f"p{i}.png", high)
        write_image(root / "low" / f"p{i}.png", high * 0.2)


def no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress bars off (what ``TQDM_DISABLE=1`` does, which tqdm reads only at import):
    stderr then holds only what restorekit says."""
    import tqdm

    init = tqdm.std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "disable": True})

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", quiet)


@pytest.fixture
def tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """cwd = tmp_path with a ``data`` folder; the registry has the built-ins, tick and
    pix2pixhd; no progress bars."""
    import restorekit_pix2pixhd

    no_progress_bars(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    monkeypatch.delenv("RESTOREKIT_MAX_PIXELS", raising=False)
    write_pairs(tmp_path / "data")
    with testing.isolated(tick=TickPlugin(), pix2pixhd=restorekit_pix2pixhd) as registry:
        yield registry


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` (but the top-level folders ``skip``) -> sha256 of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in skip:
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def photo(path: Path, size: tuple[int, int] = (16, 16), value: float = 0.3) -> None:
    rng = np.random.default_rng(len(str(path)))
    write_image(path, (rng.random((*size, 3)) * value).astype(np.float32))


def train_tick(name: str, *extra: str) -> int:
    return main(["run", "tick", "--train", "--name", name, *FAST, *extra])


# -- data loss -------------------------------------------------------------------------------
def test_overwrite_deletes_only_run_folders(tick, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `--overwrite --name ../v` (or an absolute path) deleted v/photo.png."""
    photo(tmp_path / "v" / "photo.png")
    photo(tmp_path / "runs" / "album" / "photo.png")
    before = snapshot(tmp_path)
    for name in ("../v", str(tmp_path / "v"), "a/b", "..", "."):
        assert train_tick(name, "--overwrite", "--max-steps", "1") == 2
        assert "--name" in one_error(capsys)
    assert train_tick("album", "--overwrite", "--max-steps", "1") == 2
    assert "is not a restorekit run folder (no .restorekit-run marker" in one_error(capsys)
    assert snapshot(tmp_path) == before
    # A run folder is recognised and replaced.
    assert train_tick("r", "--max-steps", "1") == 0
    (tmp_path / "runs" / "r" / "old.txt").write_text("x")
    assert train_tick("r", "--overwrite", "--max-steps", "1") == 0
    assert not (tmp_path / "runs" / "r" / "old.txt").exists()


def test_overwrite_needs_the_marker_restorekit_wrote(tick, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Was (issue 19, case 4): any config.json with a string "model" let --overwrite delete
    the folder (notes, data, a resnet50 config: all gone)."""
    folder = tmp_path / "runs" / "r"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (folder / "config.json").write_text(json.dumps({"model": "resnet50", "lr": 0.1}))
    before = snapshot(tmp_path)
    assert train_tick("r", "--overwrite", "--max-steps", "1") == 2
    assert "not a restorekit run folder (no .restorekit-run marker" in one_error(capsys)
    # Nor does restorekit's own lock file (or checkpoint-looking files) stand in for it.
    (folder / ".restorekit.lock").write_text("")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.safetensors").write_bytes(b"not mine")
    before = snapshot(tmp_path)
    assert train_tick("r", "--overwrite", "--max-steps", "1") == 2
    assert "--resume it once to adopt it" in one_error(capsys)
    assert snapshot(tmp_path) == before


def test_a_run_made_before_the_marker_is_adopted_by_resume(tick, tmp_path: Path) -> None:
    assert train_tick("r", "--max-steps", "1") == 0
    run = RunDir(tmp_path / "runs" / "r")
    assert run.is_marked()
    run.marker_path.unlink()  # as an older restorekit left it
    assert train_tick("r", "--overwrite", "--max-steps", "1") == 2
    assert main(["run", "tick", "--train", "--resume", "--name", "r", "--data", "data",
                 "--max-steps", "2"]) == 0
    assert run.is_marked()
    assert train_tick("r", "--overwrite", "--max-steps", "1") == 0


def test_resume_never_deletes(tick, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a missing `last` made --resume start over, deleting best, logs and samples."""
    assert train_tick("r", "--max-steps", "2") == 0
    run = RunDir(tmp_path / "runs" / "r")
    assert run.checkpoint_path("best").is_file()
    for path in (run.checkpoint_path("last"), run.checkpoints / "last.json"):
        path.unlink()
    kept = snapshot(run.path, skip=("checkpoints",))
    best = run.checkpoint_path("best").read_bytes()
    capsys.readouterr()
    assert main(["run", "tick", "--train", "--resume", "--name", "r", "--max-steps", "3"]) == 0
    assert "resuming runs/r from best.safetensors" in capsys.readouterr().out
    assert read_checkpoint(run.checkpoint_path("last"))[1]["step"] == 3
    assert run.sample_files() and (run.path / "metrics.jsonl").is_file()
    # A corrupt last: best again, with a warning; never a deletion.
    run.checkpoint_path("last").write_bytes(b"\0" * 100)
    assert main(["run", "tick", "--train", "--resume", "--name", "r", "--max-steps", "4"]) == 0
    assert "resuming from best.safetensors instead" in capsys.readouterr().err
    # Nothing usable: one line, and every file stays as it was.
    for which in ("last", "best"):
        run.checkpoint_path(which).write_bytes(b"junk")
    before = snapshot(tmp_path)
    assert main(["run", "tick", "--train", "--resume", "--name", "r"]) != 0
    assert "no usable checkpoint" in one_error(capsys)
    assert snapshot(tmp_path) == before
    del kept, best


def test_output_inside_input_is_refused(tick, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `preprocess photos -o photos` overwrote the photos with exit 0."""
    for name in ("a", "b"):
        photo(tmp_path / "photos" / f"{name}.png")
    photo(tmp_path / "loose.png")
    before = snapshot(tmp_path)
    cases = [
        ["preprocess", "photos", "-o", "photos", "--preprocess", "gamma"],
        ["preprocess", "photos", "-o", "photos/sub", "--preprocess", "gamma"],
        ["preprocess", "photos/a.png", "-o", "photos", "--preprocess", "gamma"],
        ["preprocess", "loose.png", "-o", ".", "--preprocess", "gamma"],
        ["run", "classic", "--enhance", "photos", "-o", "photos"],
        ["run", "classic", "--enhance", "photos", "-o", "./photos/../photos"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        assert "-o" in one_error(capsys)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "photos" / "sub").exists()


EXISTS = "already exists; refusing to replace it (choose another -o folder, or --overwrite)"
LINK = "is a symbolic link (to ../in/a.png); refusing to write through or replace it"


def test_outputs_never_replace_what_the_user_has(tick, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `preprocess in/b.jpg -o in` (and `--enhance`) replaced the user's in/b.png, an
    existing out2/a.png was replaced without a word, and a symbolic link out/b.png was
    replaced by a file; all with exit 0."""
    for name in ("a.png", "b.png", "b.jpg", "c.png"):
        photo(tmp_path / "in" / name)
    photo(tmp_path / "out2" / "a.png", value=0.9)  # a previous result
    photo(tmp_path / "out3" / "c.png", value=0.9)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").symlink_to(Path("..") / "in" / "a.png")
    (tmp_path / "hard").mkdir()
    os.link(tmp_path / "in" / "a.png", tmp_path / "hard" / "a.png")
    (tmp_path / "out4" / "c.png").mkdir(parents=True)
    before = snapshot(tmp_path)
    cases = [
        (["preprocess", "in/b.jpg", "-o", "in"], f"-o in: {Path('in/b.png')} {EXISTS}"),
        (["run", "classic", "--enhance", "in/b.jpg", "-o", "in"],
         f"-o in: {Path('in/b.png')} {EXISTS}"),
        (["preprocess", "in/a.png", "-o", "out2"], f"-o out2: {Path('out2/a.png')} {EXISTS}"),
        (["run", "classic", "--enhance", "in/a.png", "-o", "out2"],
         f"-o out2: {Path('out2/a.png')} {EXISTS}"),
        # all outputs are checked first: out3/a.png would be new, but nothing is written
        (["preprocess", "in/a.png", "in/c.png", "-o", "out3"],
         f"-o out3: {Path('out3/c.png')} {EXISTS}"),
        (["preprocess", "in/b.png", "-o", "out"], f"-o out: {Path('out/b.png')} {LINK}"),
        (["preprocess", "in/b.png", "-o", "out", "--overwrite"],
         f"-o out: {Path('out/b.png')} {LINK}"),
        (["run", "classic", "--enhance", "in/b.png", "-o", "out", "--overwrite"],
         f"-o out: {Path('out/b.png')} {LINK}"),
        (["preprocess", "in/a.png", "-o", "in", "--overwrite"],
         f"-o in: {Path('in/a.png')} is also an input; refusing to overwrite it"),
        (["preprocess", "in/a.png", "-o", "hard", "--overwrite"],  # a hard link to the input
         f"-o hard: {Path('hard/a.png')} is also an input; refusing to overwrite it"),
        (["run", "classic", "--enhance", "in/c.png", "-o", "out4", "--overwrite"],
         f"-o out4: {Path('out4/c.png')} exists and is not a regular file; refusing to "
         f"replace it"),
    ]
    for argv, line in cases:
        if argv[0] == "preprocess":
            argv = [*argv, "--preprocess", "gamma"]
        assert main(argv) == 2, argv
        assert one_error(capsys) == f"restorekit: error: {line}", argv
    assert snapshot(tmp_path) == before
    assert (tmp_path / "out" / "b.png").is_symlink() and (tmp_path / "out4" / "c.png").is_dir()
    assert not (tmp_path / "out3" / "a.png").exists()
    # --overwrite replaces a previous result, and only that.
    assert main(["preprocess", "in/a.png", "-o", "out2", "--preprocess", "gamma",
                 "--overwrite"]) == 0
    assert main(["run", "classic", "--enhance", "in/c.png", "-o", "out3", "--overwrite"]) == 0
    after = snapshot(tmp_path)
    assert sorted(k for k in after if after[k] != before.get(k)) == ["out2/a.png", "out3/c.png"]
    assert set(before) == set(after) and not list(tmp_path.rglob("*.tmp"))


def test_two_inputs_for_one_output_name(tick, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("b.png", "b.jpg"):
        photo(tmp_path / "in" / name)
    line = "share the stem 'b'; both outputs would be named b.png"
    assert main(["preprocess", "in/b.png", "in/b.jpg", "-o", "o", "--preprocess", "gamma"]) == 2
    assert one_error(capsys) == (f"restorekit: error: {Path('in/b.png')} and "
                                 f"{Path('in/b.jpg')} {line}")
    assert main(["run", "classic", "--enhance", "in", "-o", "o"]) == 2
    assert one_error(capsys) == (f"restorekit: error: {Path('in/b.jpg')} and "
                                 f"{Path('in/b.png')} {line}")
    assert not (tmp_path / "o").exists()


def _special_files(root: Path) -> None:
    """in/fifo.png (a FIFO), in/socket.png (a bound AF_UNIX socket), in/null.png (a link
    to /dev/null, a character device), beside a real in/a.png; cwd is ``root``."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("POSIX special files")
    photo(root / "in" / "a.png")
    os.mkfifo(root / "in" / "fifo.png")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind("in/socket.png")  # relative: AF_UNIX paths are limited to ~100 bytes
    (root / "in" / "null.png").symlink_to(os.devnull)


SPECIAL = {"fifo.png": "a FIFO (named pipe)", "socket.png": "a socket",
           "null.png": "a character device"}


def test_special_files_are_refused_not_opened(tick, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `mkfifo in/fifo.png` hung `preprocess` and `--enhance` forever in open()."""
    _special_files(tmp_path)
    before = snapshot(tmp_path)
    with testing.deadline(60):
        for name, kind in SPECIAL.items():
            path = Path("in") / name
            for argv in (["preprocess", str(path), "-o", "out", "--preprocess", "gamma"],
                         ["run", "classic", "--enhance", str(path), "-o", "out"]):
                assert main(argv) == 1, argv
                assert one_error(capsys) == (f"restorekit: error: {path}: cannot read image: "
                                             f"it is {kind}, not a regular file")
        assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
        # A folder scan skips them without opening them.
        assert main(["run", "classic", "--enhance", "in", "-o", "out"]) == 0
        assert main(["preprocess", "in", "-o", "pre", "--preprocess", "gamma"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    assert [p.name for p in (tmp_path / "pre").iterdir()] == ["a.png"]


def test_non_finite_weights_are_never_checkpointed(tick, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Was: inf weights (after the step whose loss was finite) saved as the last good one."""
    assert train_tick("r", "--blowup-at", "3", "--checkpoint-every", "1",
                      "--max-steps", "6") == 1
    line = one_error(capsys)
    assert "tensor 'net.net.weight' is inf or NaN after step 3" in line
    assert "last good checkpoint is runs/r/checkpoints/last.safetensors" in line
    tensors, meta = read_checkpoint(tmp_path / "runs" / "r" / "checkpoints" /
                                    "last.safetensors")
    assert meta["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values()
                                     if t.is_floating_point())


def test_non_finite_checkpoint_is_refused_on_load(tick, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Was: --enhance with an inf checkpoint wrote black images with exit 0."""
    assert train_tick("r", "--max-steps", "1") == 0
    path = tmp_path / "runs" / "r" / "checkpoints" / "last.safetensors"
    tensors, meta = read_checkpoint(path)
    tensors["net.net.bias"] = torch.full_like(tensors["net.net.bias"], float("nan"))
    safetensors.torch.save_file(tensors, str(path), metadata={"restorekit": json.dumps(meta)})
    photo(tmp_path / "in" / "a.png")
    capsys.readouterr()
    assert main(["run", "tick", "--enhance", "in", "-o", "out", "--checkpoint", "runs/r"]) == 1
    assert one_error(capsys) == (f"restorekit: error: {Path('runs/r/checkpoints/last.safetensors')}"
                                 f": tensor 'net.net.bias' holds inf or NaN values; the "
                                 f"checkpoint is unusable")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_writer_per_run_folder(tick, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Was: two processes on one run folder both exited 0, interleaving logs."""
    assert train_tick("r", "--max-steps", "1") == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom restorekit.engine import RunDir\n"
         "run = RunDir('runs/r')\nrun.lock()\nprint('locked', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        capsys.readouterr()
        for extra in (["--resume"], ["--overwrite"]):
            assert main(["run", "tick", "--train", "--name", "r", *extra,
                         *(FAST if extra == ["--overwrite"] else [])]) == 1
            assert f"is in use by process {holder.pid}" in one_error(capsys)
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # The dead holder's lock is taken over, with a message.
    assert main(["run", "tick", "--train", "--resume", "--name", "r", "--max-steps", "2"]) == 0
    assert f"took over the stale lock of process {holder.pid}" in capsys.readouterr().err


def test_failed_start_and_stray_temp_files(tick, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    if not torch.cuda.is_available():
        assert train_tick("gpu", "--device", "cuda") == 2
        assert "CUDA is not available" in one_error(capsys)
        assert not (tmp_path / "runs" / "gpu").exists()
    assert train_tick("r", "--max-steps", "1") == 0
    run = RunDir(tmp_path / "runs" / "r")
    strays = [run.checkpoints / ".last.safetensors.x1.tmp", run.path / ".config.json.x2.tmp"]
    for path in strays:
        path.write_bytes(b"\0" * 1000)
    outside = tmp_path / ".keep.tmp"
    outside.write_text("mine")
    assert main(["run", "tick", "--train", "--resume", "--name", "r", "--max-steps", "2"]) == 0
    assert not any(p.exists() for p in strays) and outside.read_text() == "mine"
    umask = os.umask(0)
    os.umask(umask)
    modes = {w: run.checkpoint_path(w).stat().st_mode & 0o777 for w in ("last", "best")}
    assert modes == {"last": 0o666 & ~umask, "best": 0o666 & ~umask}


def test_loss_window_spans_a_resume(tick, tmp_path: Path) -> None:
    """Was: the first loss record after a resume averaged only the steps since it."""
    assert train_tick("whole", "--log-every", "4", "--max-steps", "8") == 0
    assert train_tick("split", "--log-every", "4", "--max-steps", "6") == 0
    assert main(["run", "tick", "--train", "--resume", "--name", "split",
                 "--max-steps", "8"]) == 0
    whole = RunDir(tmp_path / "runs" / "whole").read_log("losses")
    split = RunDir(tmp_path / "runs" / "split").read_log("losses")
    assert [r["step"] for r in whole] == [r["step"] for r in split] == [4, 8]
    assert split[1]["l1"] == pytest.approx(whole[1]["l1"], rel=1e-6, abs=0)


# -- one clean line ----------------------------------------------------------------------------
def test_metrics_json_writes_null_for_infinite_psnr(tick, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    photo(tmp_path / "p" / "a.png")
    photo(tmp_path / "g" / "a.png")
    (tmp_path / "g" / "a.png").write_bytes((tmp_path / "p" / "a.png").read_bytes())
    assert main(["metrics", "p", "g", "--json", "--metrics", "psnr,mae"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    data = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert data["mean"] == {"psnr": None, "mae": 0.0}


def pix2pixhd_run(path: Path) -> None:
    """A pix2pixhd run folder with freshly initialised weights (no training needed)."""
    from restorekit.engine import import_weights
    from restorekit.pipeline import Pipeline
    from restorekit_pix2pixhd.model import Pix2PixHD

    model = Pix2PixHD(Pix2PixHD.make_options("quick", ngf=4, ndf=4, n_blocks_global=1,
                                             device="cpu"), Pipeline())
    model.build(torch.device("cpu"))
    import_weights(model, {}, path, source="fresh")


def test_small_images_are_checked_up_front(tick, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `Expected more than 1 spatial element` halfway through a batch."""
    pix2pixhd_run(tmp_path / "runs" / "p")
    photo(tmp_path / "in" / "a_ok.png", (16, 16))
    photo(tmp_path / "in" / "b_tiny.png", (4, 4))
    photo(tmp_path / "in" / "c_strip.png", (2, 400))
    capsys.readouterr()
    argv = ["run", "pix2pixhd", "--enhance", "in", "-o", "out", "--checkpoint", "runs/p"]
    assert main(argv) == 1
    assert "b_tiny.png: image is 4x4 (HxW), smaller than the 5x5" in one_error(capsys)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert main([*argv, "--skip-bad", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "c_strip.png" in err and "VGG" not in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_ok.png"]


def test_preprocess_error_in_a_worker_reads_as_in_process(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    def picky(image, level: float = 0.5):
        raise ValueError(f"cannot lift to {level}")

    class Picky:
        @hookimpl
        def register_preprocessors(self, register):
            register(Preprocessor("picky", picky, params={"level": 0.5}))

    no_progress_bars(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    write_pairs(tmp_path / "data")
    lines = []
    with testing.isolated(tick=TickPlugin(), picky=Picky()):
        for workers in ("0", "1"):
            assert main(["run", "tick", "--train", "--name", f"w{workers}", *FAST,
                         "--preprocess", "picky", "--num-workers", workers,
                         "--max-steps", "1"]) == 2
            lines.append(one_error(capsys))
    assert lines[0] == lines[1] == "restorekit: error: --preprocess: picky: cannot lift to 0.5"


# -- the table -------------------------------------------------------------------------------
def _corrupt_image(root: Path) -> None:
    (root / "in").mkdir()
    (root / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def _big_tiff(root: Path, mp: pytest.MonkeyPatch) -> None:
    import tifffile

    (root / "in").mkdir()
    tifffile.imwrite(root / "in" / "big.tif", np.zeros((64, 64, 3), np.uint8),
                     photometric="rgb")
    mp.setenv("RESTOREKIT_MAX_PIXELS", "1000")


def _small_pairs(root: Path) -> None:
    photo(root / "p" / "a.png", (5, 5))
    (root / "g").mkdir()
    (root / "g" / "a.png").write_bytes((root / "p" / "a.png").read_bytes())


def _photos(root: Path) -> None:
    photo(root / "in" / "a.png")


def _output_is_a_file(root: Path) -> None:
    _photos(root)
    (root / "out").write_text("a file, not a folder")


def _previous_result(root: Path) -> None:
    _photos(root)
    photo(root / "out" / "a.png", value=0.9)


def _sibling(root: Path) -> None:
    _photos(root)
    photo(root / "in" / "a.jpg")


def _linked_output(root: Path) -> None:
    _photos(root)
    (root / "out").mkdir()
    (root / "out" / "a.png").symlink_to(Path("..") / "in" / "a.png")


def _trained(root: Path) -> None:
    assert train_tick("r", "--max-steps", "1") == 0


def _pointer(value: object) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        _trained(root)
        (root / "runs" / "r" / "checkpoints" / "latest.json").write_text(json.dumps(value))
    return setup


def _config_extra(root: Path) -> None:
    _trained(root)
    path = root / "runs" / "r" / "config.json"
    config = json.loads(path.read_text())
    config["extra"] = {"data_path": 42}
    path.write_text(json.dumps(config))


def _meta(**fields: object) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        _trained(root)
        path = root / "runs" / "r" / "checkpoints" / "last.safetensors"
        tensors, meta = read_checkpoint(path)
        for key, value in fields.items():
            if key == "options" and isinstance(value, dict):
                meta["options"] = {**meta["options"], **value}
            else:
                meta[key] = value
        safetensors.torch.save_file(tensors, str(path),
                                    metadata={"restorekit": json.dumps(meta)})
    return setup


def _p2p_options(trained: bool = False, **options: object) -> Callable[[Path], None]:
    """A pix2pixhd run ``runs/p`` whose checkpoint's stored options say ``options``
    (``trained``: after a real step, so that it can be resumed)."""
    def setup(root: Path) -> None:
        if trained:
            tiny = ["--ngf", "4", "--ndf", "4", "--n-blocks-global", "1", "--crop-size", "16",
                    "--samples-per-epoch", "2", "--num-samples", "1", "--eval-every", "0"]
            assert main(["run", "pix2pixhd", "--train", "--name", "p", "--data", "data",
                         "--preset", "quick", "--device", "cpu", *tiny,
                         "--max-steps", "1"]) == 0
        else:
            pix2pixhd_run(root / "runs" / "p")
        path = root / "runs" / "p" / "checkpoints" / "last.safetensors"
        tensors, meta = read_checkpoint(path)
        meta["options"] = {**meta["options"], **options}
        safetensors.torch.save_file(tensors, str(path),
                                    metadata={"restorekit": json.dumps(meta)})
    return setup


def _run_holdout(value: object) -> Callable[[Path], None]:
    """A tick run ``runs/r`` whose config.json says ``extra.holdout = value``."""
    def setup(root: Path) -> None:
        _trained(root)
        path = root / "runs" / "r" / "config.json"
        config = json.loads(path.read_text())
        config["extra"] = {**config["extra"], "holdout": value}
        path.write_text(json.dumps(config))
    return setup


def _config(**top: object) -> Callable[[Path], None]:
    """``cfg.json``: a valid pix2pixhd --config file with ``top`` (and ``options``) over it."""
    def setup(root: Path) -> None:
        config: dict = {"model": "pix2pixhd", "options": {"ngf": 4, "n_blocks_global": 1},
                        "preprocess": "", "extra": {"data_path": "data"}}
        for key, value in top.items():
            config[key] = {**config[key], **value} if key == "options" else value
        (root / "cfg.json").write_text(json.dumps(config))
    return setup


def _config_bytes(data: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "cfg.json").write_bytes(data)
    return setup


def _pickle(root: Path) -> None:
    torch.save({"w": torch.zeros(2)}, root / "model.safetensors")


def _full_disk(root: Path, mp: pytest.MonkeyPatch) -> None:
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)  # half-written, then the disk is full
        raise safetensors.SafetensorError("Error while serializing: No space left on device")

    _trained(root)
    mp.setattr(safetensors.torch, "save_file", full)


def _read_only(root: Path, mp: pytest.MonkeyPatch) -> None:
    _photos(root)

    def replace(src, dst):
        raise OSError(30, "Read-only file system", str(dst))

    mp.setattr(os, "replace", replace)


class Row(NamedTuple):
    """One bad input: the command, the words its one error line must hold ("" = any) and
    its exit status (None = any non-zero)."""

    name: str
    setup: Callable[..., None] | None
    argv: list[str]
    words: str = ""
    code: int | None = None


TRAIN = ["run", "pix2pixhd", "--train", "--data", "data", "--max-steps", "1"]
CONFIG = ["run", "pix2pixhd", "--train", "--config", "cfg.json", "--max-steps", "1"]
P2P = ["--checkpoint", "runs/p", "--device", "cpu"]
TABLE: list[tuple] = [
    # images
    ("corrupt image", _corrupt_image, ["run", "classic", "--enhance", "in", "-o", "out"]),
    ("tiff over the pixel limit", _big_tiff, ["run", "classic", "--enhance", "in", "-o", "out"]),
    ("ssim under 7x7", _small_pairs, ["metrics", "p", "g"]),
    ("ssim under 7x7, eval", lambda r: (_small_pairs(r), photo(r / "d" / "low" / "a.png", (5, 5)),
                                        photo(r / "d" / "high" / "a.png", (5, 5))),
     ["run", "classic", "--eval", "--data", "d"]),
    # options
    ("batch size 0", None, [*TRAIN, "--batch-size", "0"]),
    ("num workers -1", None, [*TRAIN, "--num-workers", "-1"]),
    ("crop size 1", None, [*TRAIN, "--crop-size", "1"]),
    ("ngf 0", None, [*TRAIN, "--ngf", "0"]),
    ("lr nan", None, [*TRAIN, "--lr", "nan"]),
    ("lr -1", None, [*TRAIN, "--lr", "-1"]),
    ("beta1 2", None, [*TRAIN, "--beta1", "2"]),
    ("netG bogus", None, [*TRAIN, "--netG", "bogus"]),
    ("histeq bins", _photos, ["preprocess", "in", "-o", "out", "--preprocess",
                              "histeq:bins=99999999999"]),
    ("clahe clip", _photos, ["preprocess", "in", "-o", "out", "--preprocess", "clahe:clip=1e308"]),
    ("clahe kernel", None, [*TRAIN, "--preprocess", "clahe:kernel=100000", "--num-workers", "1"]),
    ("bad name", None, [*TRAIN, "--name", "../elsewhere"]),
    ("cuda on cpu", None, [*TRAIN, "--device", "cuda"] if not torch.cuda.is_available()
     else [*TRAIN, "--device", "cuda:99"]),
    # checkpoints
    ("pointer file 42", _pointer({"file": 42}), ["run", "tick", "--eval", "--data", "data",
                                                 "--checkpoint", "runs/r"]),
    ("pointer escapes", _pointer({"file": "../../x.safetensors"}),
     ["run", "tick", "--eval", "--data", "data", "--checkpoint", "runs/r"]),
    ("config extra", _config_extra, ["run", "tick", "--train", "--resume", "--name", "r"]),
    ("metadata epoch", _meta(epoch="x"), ["run", "tick", "--enhance", "data/low", "-o", "out",
                                          "--checkpoint", "runs/r/checkpoints/last.safetensors"]),
    ("metadata options", _meta(options={"batch_size": 0}),
     ["run", "tick", "--enhance", "data/low", "-o", "out", "--checkpoint", "runs/r"]),
    ("metadata options type", _meta(options=[1]),
     ["run", "tick", "--enhance", "data/low", "-o", "out", "--checkpoint", "runs/r"]),
    ("pickle checkpoint", _pickle, ["run", "tick", "--enhance", "data/low", "-o", "out",
                                    "--checkpoint", "model.safetensors"]),
    *[(f"{kind} input{', enhance' if enhance else ''}", _special_files,
       ["run", "classic", "--enhance", f"in/{name}", "-o", "out"] if enhance else
       ["preprocess", f"in/{name}", "-o", "out", "--preprocess", "gamma"])
      for name, kind in SPECIAL.items() for enhance in (False, True)],
    # outputs
    ("output is a file", _output_is_a_file, ["run", "classic", "--enhance", "in", "-o", "out"]),
    ("output exists", _previous_result, ["preprocess", "in/a.png", "-o", "out", "--preprocess",
                                         "gamma"]),
    ("output exists, enhance", _previous_result, ["run", "classic", "--enhance", "in", "-o",
                                                  "out"]),
    ("output is the input's sibling", _sibling, ["preprocess", "in/a.jpg", "-o", "in",
                                                 "--preprocess", "gamma"]),
    ("output is the input's sibling, enhance", _sibling,
     ["run", "classic", "--enhance", "in/a.jpg", "-o", "in"]),
    ("output is the input, --overwrite", _photos, ["run", "classic", "--enhance", "in/a.png",
                                                   "-o", "in", "--overwrite"]),
    ("output is a link, --overwrite", _linked_output,
     ["run", "classic", "--enhance", "in/a.png", "-o", "out", "--overwrite"]),
    ("read-only output", _read_only, ["run", "classic", "--enhance", "in", "-o", "out"]),
    ("full disk at a checkpoint", _full_disk, ["run", "tick", "--train", "--resume", "--name",
                                               "r", "--max-steps", "2"]),
    # issue 19, every number has a range: options (cases 7 and 9)
    ("num workers 1e20", None, [*TRAIN, "--num-workers", "99999999999999999999"],
     "--num-workers: 99999999999999999999 is out of range [0, 256]", 2),
    ("n blocks global 1e20", None, [*TRAIN, "--n-blocks-global", "99999999999999999999"],
     "--n-blocks-global: 99999999999999999999 is out of range [0, 64]", 2),
    ("samples per epoch 1e20", None, [*TRAIN, "--samples-per-epoch", "1e20"],
     "--samples-per-epoch: expected an integer in [0, 10000000], got '1e20'", 2),
    ("ngf 1e20", None, [*TRAIN, "--ngf", "1e20"],
     "--ngf: expected an integer in [1, 1024], got '1e20'", 2),
    ("ndf 1e20", None, [*TRAIN, "--ndf", "100000000000000000000"],
     "--ndf: 100000000000000000000 is out of range [1, 1024]", 2),
    ("batch size 1e20", None, [*TRAIN, "--batch-size", "1e20"],
     "--batch-size: expected an integer in [1, 4096], got '1e20'", 2),
    ("unbounded plugin option past int64", None,
     ["run", "tick", "--train", *FAST, "--blowup-at", "99999999999999999999"],
     "--blowup-at: 99999999999999999999 does not fit a 64-bit integer (allowed: [0, inf])", 2),
    ("nproc per node 1e20", None, [*TRAIN, "--nproc-per-node", "99999999999999999999"],
     "--nproc-per-node: 99999999999999999999 is out of range [0, 256]", 2),
    ("tile 1e9", _trained, ["run", "tick", "--enhance", "data/low", "-o", "out", "--checkpoint",
                            "runs/r", "--tile", "1e9"],
     "--tile: expected an integer in [0, 16384], got '1e9'", 2),
    ("tune trials 1e20", None, ["tune", "pix2pixhd", "--trials", "1e20"],
     "--trials: expected an integer in [0, 1000000], got '1e20'", 2),
    ("tune seed past 32 bits", None, ["tune", "pix2pixhd", "--trials", "1", "--seed", str(2**32)],
     "--seed: 4294967296 is out of range [0, 4294967295]", 2),
    # devices (case 9)
    ("device cpu:3", None, [*TRAIN, "--device", "cpu:3"],
     "--device cpu:3: the CPU has no index 3 (use cpu)", 2),
    ("device empty", None, [*TRAIN, "--device", ""], "--device: empty device name", 2),
    ("device cpu:3 enhance", _trained, ["run", "tick", "--enhance", "data/low", "-o", "out",
                                        "--checkpoint", "runs/r", "--device", "cpu:3"],
     "--device cpu:3: the CPU has no index 3", 2),
    # checkpoints whose stored options are out of range (case 10)
    ("checkpoint ngf 100000 enhance", _p2p_options(ngf=100000),
     ["run", "pix2pixhd", "--enhance", "data/low", "-o", "out", *P2P],
     "last.safetensors: checkpoint metadata field 'options.ngf': 100000 is out of range "
     "[1, 1024]", 1),
    ("checkpoint ngf 100000 eval", _p2p_options(ngf=100000),
     ["run", "pix2pixhd", "--eval", "--data", "data", *P2P],
     "checkpoint metadata field 'options.ngf': 100000 is out of range [1, 1024]", 1),
    ("checkpoint ngf 100000 resume", _p2p_options(trained=True, ngf=100000),
     ["run", "pix2pixhd", "--train", "--resume", "--name", "p"],
     "checkpoint metadata field 'options.ngf': 100000 is out of range [1, 1024]", 1),
    ("checkpoint ngf 8.7", _p2p_options(ngf=8.7),
     ["run", "pix2pixhd", "--enhance", "data/low", "-o", "out", *P2P],
     "checkpoint metadata field 'options.ngf': expected an integer, got 8.7", 1),
    ("checkpoint num workers 1e20", _meta(options={"num_workers": 10**20}),
     ["run", "tick", "--train", "--resume", "--name", "r"],
     "checkpoint metadata field 'options.num_workers': 100000000000000000000 is out of range",
     1),
    ("run config holdout list", _run_holdout([0.2, 0]),
     ["run", "tick", "--train", "--resume", "--name", "r"],
     "config.json: field 'extra.holdout': expected a table {fraction, seed}, got [0.2, 0]", 2),
    ("allocation fails while building", None,
     ["run", "hog", "--train", *FAST, "--cells", str(10**13)],
     "building hog with cells=10000000000000 needs more memory than this machine has "
     "(cpu could not allocate 40000000000000 bytes)", 1),
    # --config files with wrong value types (case 11)
    ("config ngf 8.7", _config(options={"ngf": 8.7}), CONFIG,
     "--config: cfg.json: field 'options.ngf': expected an integer, got 8.7", 2),
    ("config ngf 100000", _config(options={"ngf": 100000}), CONFIG,
     "--config: cfg.json: field 'options.ngf': 100000 is out of range [1, 1024]", 2),
    ("config fused 1", _config(options={"fused": 1}), CONFIG,
     "--config: cfg.json: field 'options.fused': expected true or false, got 1", 2),
    ("config extra x", _config(extra="x"), CONFIG,
     "--config: cfg.json: field 'extra': expected a table, got 'x'", 2),
    ("config holdout list", _config(extra={"holdout": [0.2, 0]}), CONFIG,
     "--config: cfg.json: field 'extra.holdout': expected a table {fraction, seed}", 2),
    ("config holdout fraction a", _config(extra={"holdout": {"fraction": "a"}}), CONFIG,
     "field 'extra.holdout': 'fraction' must be a number between 0 and 1, got 'a'", 2),
    ("config data path 5", _config(extra={"data_path": 5}), CONFIG,
     "--config: cfg.json: field 'extra.data_path': expected a folder name or null, got 5", 2),
    ("config preprocess 5", _config(preprocess=5), CONFIG,
     "--config: cfg.json: field 'preprocess': expected a string, got 5", 2),
    ("config utf-16", _config_bytes(json.dumps({"model": "pix2pixhd", "options": {}})
                                    .encode("utf-16")), CONFIG,
     "--config: cfg.json: not UTF-8 text", 2),
    ("config binary", _config_bytes(bytes(range(256))), CONFIG,
     "--config: cfg.json: not UTF-8 text", 2),
]


@pytest.mark.parametrize("row", [Row(*row) for row in TABLE], ids=[row[0] for row in TABLE])
def test_bad_inputs(tick, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch, row: Row) -> None:
    """Non-zero exit (the row's), exactly one line on stderr holding the row's words, no
    traceback, nothing written outside the run or output folder (and no temporary file
    left in them)."""
    setup, argv = row.setup, row.argv
    if setup is not None:
        if "mp" in setup.__code__.co_varnames[:setup.__code__.co_argcount]:
            setup(tmp_path, monkeypatch)
        else:
            setup(tmp_path)
    before = snapshot(tmp_path, skip=("runs", "out"))
    capsys.readouterr()
    with testing.deadline(60):  # a FIFO input hung in open() forever (each row takes about 1 s)
        code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert err.startswith("restorekit: error: "), err
    assert row.words in err and code == (row.code or code), (err, code)
    assert snapshot(tmp_path, skip=("runs", "out")) == before
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


# -- the best checkpoint -----------------------------------------------------------------------
def test_a_best_checkpoint_by_any_metric(tick, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Was: best was PSNR's alone, so with `--metrics ssim` no best checkpoint was written."""
    assert train_tick("s", "--metrics", "ssim") == 0
    out = capsys.readouterr().out
    run = RunDir(tmp_path / "runs" / "s")
    best = read_checkpoint(run.checkpoint_path("best"))[1]["best"]
    assert best["metric"] == "ssim" and best["higher_is_better"] is True and best["step"] == 8
    assert (f"best checkpoint chosen on the validation split (1 pair) by ssim: epoch 1 (step 8, "
            f"ssim {best['value']:.4f})") in out
    assert train_tick("m", "--metrics", "ssim,mae", "--best-metric", "mae") == 0
    best = read_checkpoint(RunDir(tmp_path / "runs" / "m").checkpoint_path("best"))[1]["best"]
    assert best["metric"] == "mae" and best["higher_is_better"] is False
    capsys.readouterr()
    assert train_tick("x", "--metrics", "ssim", "--best-metric", "lpips") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "restorekit: error: --select-metric: 'lpips' is not evaluated (metrics: ssim); add "
        "it to --metrics")
    assert not (tmp_path / "runs" / "x").exists()
