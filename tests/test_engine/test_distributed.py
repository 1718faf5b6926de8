"""Distributed training (issue 12): 2 CPU processes over gloo, launched as torchrun does.

The end-to-end tests train a tiny Pix2PixHD (fused extension on, D frozen during the G
step, two optimisers) through ``restorekit run ... --nproc-per-node 2``; the primitives
are checked in a 2-process group started with ``python -m torch.distributed.run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from restorekit.cli import main
from restorekit.engine import load_trained, read_checkpoint
from restorekit.engine.distributed import Distributed
from restorekit.plugins import get_registry

TINY = ["--ngf", "4", "--n-downsample-global", "1", "--n-blocks-global", "1", "--ndf", "4",
        "--n-layers-D", "1", "--num-D", "1", "--crop-size", "32", "--samples-per-epoch", "8",
        "--num-samples", "1", "--log-every", "1", "--device", "cpu", "--preprocess", "",
        "--fused", "--precision", "fp32"]  # fp32: compared within float32 tolerance
ENV = {"RESTOREKIT_DIST_TIMEOUT": "60", "TQDM_DISABLE": "1"}


def launch(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "restorekit", *args], cwd=cwd,
                          env={**os.environ, **ENV}, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()
            or "Traceback" in line]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with six 48x48 pairs in data/low and data/high."""
    from restorekit.data import write_image

    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (root / "data" / sub).mkdir(parents=True)
    for i in range(6):
        high = rng.random((48, 48, 3)).astype(np.float32)
        write_image(root / "data" / "high" / f"p{i}.png", high)
        write_image(root / "data" / "low" / f"p{i}.png", high * 0.3)
    return root


@pytest.fixture(scope="module")
def equal_runs(work: Path) -> tuple[Path, Path]:
    """3 steps: one process with batch 4 (in-process, 1 thread) and 2 processes x batch 2."""
    common = ["--data", "data", *TINY, "--niter", "2", "--niter-decay", "0", "--max-steps", "3"]
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(work)
    torch.set_num_threads(1)  # as each of the two ranks
    try:
        assert main(["run", "pix2pixhd", "--train", "--name", "one", "--batch-size", "4",
                     *common]) == 0
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    done = launch(work, "run", "pix2pixhd", "--train", "--name", "two", "--batch-size", "2",
                  "--nproc-per-node", "2", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed over 2 process(es) (gloo): batch 2 per process, effective batch 4" \
        in done.stdout
    return work / "runs" / "one", work / "runs" / "two"


def test_two_processes_take_the_steps_of_one_with_twice_the_batch(
        equal_runs: tuple[Path, Path]) -> None:
    one, two = equal_runs
    a, meta_a = read_checkpoint(one / "checkpoints" / "last.safetensors")
    b, meta_b = read_checkpoint(two / "checkpoints" / "last.safetensors")
    assert (meta_a["step"], meta_b["step"]) == (3, 3)
    assert (meta_a["world_size"], meta_b["world_size"]) == (1, 2)
    model = load_trained(one, get_registry(), device="cpu")
    compared = dead = 0
    for net in ("G", "D"):
        for i, (name, _) in enumerate(model.networks()[net].named_parameters()):
            # A bias right before an affine-free InstanceNorm has a zero gradient: its
            # computed gradient is rounding noise whose sign sets Adam's first update
            # (+-lr) in one process as in two. Every other element must agree.
            live = a[f"optim.{net}.state.{i}.exp_avg_sq"] > 1e-14
            wa, wb = a[f"net.{net}.{name}"], b[f"net.{net}.{name}"]
            torch.testing.assert_close(wa[live], wb[live], rtol=1e-5, atol=1e-6,
                                       msg=f"{net}.{name}")
            for key in ("exp_avg", "exp_avg_sq"):
                sa, sb = a[f"optim.{net}.state.{i}.{key}"], b[f"optim.{net}.state.{i}.{key}"]
                # Gradients summed in another order: noise relative to the largest.
                scale = float(sa.abs().max())
                torch.testing.assert_close(sa[live], sb[live], rtol=0, atol=1e-4 * scale)
            compared += int(live.sum())
            dead += int((~live).sum())
    assert compared > 10 * dead > 0
    # Logged losses are the average over the ranks: the batch-4 values of one process.
    la = [json.loads(x) for x in (one / "losses.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("G_GAN", "G_feat", "G_L1", "D_fake", "D_real"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), key
    # Rank 0 alone wrote the run folder; evaluation printed a single process's numbers.
    ma = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    mb = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])
    assert mb["psnr"] == pytest.approx(ma["psnr"], abs=1e-3)
    assert json.loads((two / "config.json").read_text())["world_size"] == 2


def test_eval_and_enhance_load_a_distributed_checkpoint(
        equal_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    two = equal_runs[1]
    work = two.parent.parent
    assert main(["run", "pix2pixhd", "--eval", "--checkpoint", str(two), "--data",
                 str(work / "data"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows) == {"identity", "pix2pixhd"} and rows["pix2pixhd"]["psnr"] > 0
    out = work / "enhanced"
    assert main(["run", "pix2pixhd", "--enhance", str(work / "data" / "low"), "-o", str(out),
                 "--checkpoint", str(two)]) == 0
    assert len(list(out.glob("*.png"))) == 6


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_rank_ends_cleanly_and_resumes_with_one_then_two_processes(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [sys.executable, "-m", "restorekit", "run", "pix2pixhd", "--train", "--name", "k",
            "--data", "data", *TINY, "--batch-size", "2", "--niter", "1000", "--niter-decay",
            "0", "--eval-every", "0", "--checkpoint-every", "2", "--nproc-per-node", "2"]
    proc = subprocess.Popen(args, cwd=work, env={**os.environ, **ENV}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = work / "runs" / "k" / "checkpoints" / "latest.json"
    try:
        deadline = time.monotonic() + 120
        victim = None
        while time.monotonic() < deadline and proc.poll() is None:
            if pointer.is_file() and json.loads(pointer.read_text() or "{}").get("step", 0) >= 4:
                victim = _rank_pid(proc.pid, 1)
                if victim:
                    break
            time.sleep(0.05)
        assert victim, "rank 1 never started or no checkpoint appeared"
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("restorekit: error: rank 1 ") and "last good checkpoint" in lines[0]
    checkpoints = work / "runs" / "k" / "checkpoints"
    assert not list(checkpoints.glob("*.tmp"))
    _, meta = read_checkpoint(checkpoints / "last.safetensors")
    saved = meta["step"]
    assert saved >= 4 and meta["world_size"] == 2

    # --resume with one process: 4 steps per epoch now instead of 2.
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["run", "pix2pixhd", "--train", "--resume", "--name", "k",
                     "--max-steps", str(saved + 2)]) == 0
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert f"step {saved}" in out
    assert ("restorekit: warning: the run was saved with 2 process(es) and continues with 1: "
            "the effective batch changes by 1/2") in err
    _, meta = read_checkpoint(checkpoints / "last.safetensors")
    assert (meta["step"], meta["world_size"]) == (saved + 2, 1)

    # ... and again with two.
    done = launch(work, "run", "pix2pixhd", "--train", "--resume", "--name", "k",
                  "--max-steps", str(saved + 4), "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step {saved + 2}" in done.stdout
    assert "restorekit: warning: the run was saved with 1 process(es) and continues with 2" \
        in done.stderr
    _, meta = read_checkpoint(checkpoints / "last.safetensors")
    assert (meta["step"], meta["world_size"]) == (saved + 4, 2)
    steps = [json.loads(x)["step"] for x in (work / "runs" / "k" / "losses.jsonl").open()]
    assert steps == list(range(1, saved + 5))


PRIMITIVES = textwrap.dedent('''
    import json, math, os, sys
    from dataclasses import dataclass
    from pathlib import Path
    import numpy as np
    import torch
    from torch import nn
    from restorekit.api import TrainableModel
    from restorekit.engine import TrainConfig, distributed, train
    from restorekit.errors import TrainingError, UsageError
    from restorekit.pipeline import Pipeline
    from restorekit.plugins import Registry

    d = distributed.setup()
    out = {"rank": d.rank, "world": d.world_size, "active": d.active}
    out["shard"] = d.shard(list(range(10)), 2)
    lin = nn.Linear(3, 2)
    extra = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([*lin.parameters(), extra], lr=0.1)
    with torch.no_grad():
        lin.weight.fill_(float(d.rank))
    d.after_build({"lin": lin}, seed=0)
    out["weight_synced"] = lin.weight.sum().item()
    x = torch.full((1, 3), float(d.rank + 1))
    lin(x).sum().backward()
    if d.rank == 1:
        extra.grad = torch.ones(2)  # a gradient on one rank only
    d.average_gradients(opt)
    out["grad"] = lin.weight.grad[0].tolist()
    out["extra_grad"] = extra.grad.tolist()
    loss = {"a": torch.tensor(float(d.rank)), "b": torch.tensor(1.0)}
    out["losses"] = {k: v.item() for k, v in d.reduce_losses(loss).items()}
    out["stop"] = d.agree_stop("max_minutes" if d.rank == 1 else None)
    try:
        d.from_main(lambda: (_ for _ in ()).throw(UsageError("only rank 0 sees this")))
    except UsageError as exc:
        out["from_main"] = str(exc)

    class Pairs:
        names = [f"p{i}" for i in range(8)]
        def __len__(self): return 8
        def pair(self, i, rng=None):
            x = np.full((16, 16, 3), (i + 1) / 10, np.float32)
            return x * 0.5, x
        def describe(self): return "pairs"

    @dataclass
    class Opts(TrainConfig):
        nan_rank: int = 1

    class Tiny(TrainableModel):
        name = "tiny"
        Options = Opts
        def build(self, device):
            self.net = nn.Conv2d(3, 3, 1)
            self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        def networks(self): return {"net": self.net}
        def optimizers(self): return {"net": self.opt}
        def train_step(self, low, high, ctx):
            loss = (self.net(low) - high).abs().mean()
            if ctx.step == 2 and d.rank == self.options.nan_rank:
                loss = loss * float("nan")
            ctx.backward_step(loss, "net")
            return {"l1": loss.detach()}
        def enhance_tensor(self, low): return self.net(low)

    registry = Registry()
    registry.items["models"]["tiny"] = Tiny
    model = Tiny(Opts(epochs=5, batch_size=2, crop_size=8, seed=1), Pipeline())
    try:
        train(model, train_pairs=Pairs(), test_pairs=None, run_dir=Path(sys.argv[1]),
              registry=registry, metrics=[])
    except TrainingError as exc:
        out["nan"] = str(exc)

    class Boom(Tiny):
        def train_step(self, low, high, ctx):
            if d.rank == 1 and ctx.step == 1:
                raise ValueError("boom")
            return super().train_step(low, high, ctx)

    try:
        train(Boom(Opts(epochs=5, batch_size=2, crop_size=8, seed=1, nan_rank=-1),
                   Pipeline()), train_pairs=Pairs(), test_pairs=None,
              run_dir=Path(sys.argv[1] + "-boom"), registry=registry, metrics=[])
    except ValueError as exc:
        out["boom"] = f"own: {exc}"
    except TrainingError as exc:
        out["boom"] = str(exc)
    Path(sys.argv[1] + f".rank{d.rank}.json").write_text(json.dumps(out))
    if d.rank == 1:
        os._exit(0)  # as a failed rank's process ends
    distributed.shutdown()
''')


def test_primitives_in_a_two_process_group(tmp_path: Path) -> None:
    script = tmp_path / "primitives.py"
    script.write_text(PRIMITIVES)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), str(tmp_path / "run")],
                          cwd=tmp_path, env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"run.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["active"] and r0["world"] == 2
    # Slice r of each global batch of 4; 10 items make 2 global batches.
    assert r0["shard"] == [[0, 1], [4, 5]] and r1["shard"] == [[2, 3], [6, 7]]
    assert r0["weight_synced"] == r1["weight_synced"] == 0.0  # rank 0's weights everywhere
    assert r0["grad"] == r1["grad"] == [1.5, 1.5, 1.5]  # mean of inputs 1 and 2
    assert r0["extra_grad"] == r1["extra_grad"] == [0.5, 0.5]  # missing on rank 0 = zeros
    assert r0["losses"] == r1["losses"] == {"a": 0.5, "b": 1.0}
    assert r0["stop"] == r1["stop"] == "max_minutes"
    assert r0["from_main"] == r1["from_main"] == "only rank 0 sees this"
    # A non-finite loss on rank 1 stops both ranks at the same step with the same line.
    assert r0["nan"] == r1["nan"] and "'l1' is nan" in r0["nan"] and "step 3" in r0["nan"]
    # A rank that raises: rank 0 names it and its error in one line.
    assert r1["boom"] == "own: boom"
    assert r0["boom"].startswith("rank 1 failed: ValueError: boom; training stopped at epoch 1")
    # Rank 0 alone wrote the run folder.
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


def test_nproc_per_node_goes_with_train(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "pix2pixhd", "--eval", "--nproc-per-node", "2"]) == 2
    assert "--nproc-per-node goes with --train" in capsys.readouterr().err


def test_single_process_is_untouched() -> None:
    d = Distributed()
    assert not d.active and d.is_main
    assert d.shard(list(range(5)), 2) == [[0, 1], [2, 3]]
    assert d.shard(list(range(3)), 4) == [[0, 1, 2]]  # as before: one short batch
    terms = {"a": torch.tensor(1.0)}
    assert d.reduce_losses(terms) is terms and d.agree_stop("max_steps") == "max_steps"
    assert d.from_main(lambda: 7) == 7
    error = ValueError("x")
    assert d.failure(error, 0, 0, None) is error
    assert d.position_in_epoch({"step_in_epoch": 3}) == 3
    assert d.position_in_epoch({"step_in_epoch": 3, "world_size": 2}) == 6


# -- several nodes (issue 19): two launchers on localhost, node 1 started first -------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(work: Path, launcher: str, args: dict[int, list[str]], timeout: float = 240,
               ranks: tuple[int, int] = (0, 1)
               ) -> tuple[dict[int, subprocess.CompletedProcess], dict[int, int]]:
    """Node 1, then node 0: ``torchrun --nnodes 2 --node-rank N ... -m restorekit ARGS[N]``
    or ``restorekit ARGS[N] --nproc-per-node 1 --nnodes 2 --node-rank N ...``.

    Each node runs in its own folder (its "machine"). The c10d rendezvous numbers the nodes
    by (host, launcher pid): the node started first becomes torchrun's rank 0. ``ranks``:
    the ``--node-rank`` each is given. Returns each node's result and torchrun's rank.
    """
    import uuid

    endpoint = f"127.0.0.1:{_free_port()}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                "--rdzv-id", uuid.uuid4().hex, "--local-addr", "127.0.0.1", "-m", "restorekit"]
    procs = {}
    for node in (1, 0):
        command = ([*torchrun[:3], "--node-rank", str(ranks[node]), *torchrun[3:], *args[node]]
                   if launcher == "torchrun" else
                   [sys.executable, "-m", "restorekit", *args[node], "--nproc-per-node", "1",
                    "--nnodes", "2", "--node-rank", str(ranks[node]), "--rdzv-endpoint",
                    endpoint])
        procs[node] = subprocess.Popen(
            command, cwd=work / f"node{node}", text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**os.environ, **ENV, "OMP_NUM_THREADS": "1"})
        time.sleep(1.0 if node == 1 else 0)
    # Node 1 first, unless the pids wrapped around in between.
    first = 1 if procs[1].pid < procs[0].pid else 0
    done = {}
    try:
        for node, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            done[node] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return done, {first: 0, 1 - first: 1}


def _nodes(work: Path, *extra: str) -> None:
    """Folders node0 and node1 holding the data (a symlink), and node1/EXTRA as well."""
    for node in (0, 1):
        for name in ("data", *(extra if node == 1 else ())):
            link = work / f"node{node}" / name
            link.parent.mkdir(exist_ok=True)
            if not link.exists():
                link.symlink_to(work / "data")


@pytest.mark.parametrize("launcher", ["torchrun", "restorekit"])
def test_on_two_nodes_the_node_started_as_node_0_owns_the_run_folder(
        work: Path, launcher: str) -> None:
    _nodes(work)
    name = f"owner-{launcher}"
    train = ["run", "pix2pixhd", "--train", "--name", name, "--data", "data", *TINY,
             "--batch-size", "2", "--niter", "1", "--niter-decay", "0", "--max-steps", "1",
             "--metrics", "psnr"]
    done, _ = _two_nodes(work, launcher, {0: train, 1: train})
    assert done[0].returncode == done[1].returncode == 0, done[0].stderr[-3000:] + \
        done[1].stderr[-3000:]
    assert "distributed over 2 process(es) (gloo)" in done[0].stdout
    assert done[1].stdout == ""  # node 1's process prints nothing: it is not the main one
    run = work / "node0" / "runs" / name
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert not (work / "node1" / "runs").exists()


@pytest.mark.parametrize("launcher", ["torchrun", "restorekit"])
def test_nodes_started_with_other_options_stop_with_one_line_naming_the_option(
        work: Path, launcher: str) -> None:
    _nodes(work, "other")
    train = ["run", "pix2pixhd", "--train", "--name", "m", *TINY, "--batch-size", "2",
             "--max-steps", "1"]
    done, rank = _two_nodes(work, launcher, {0: [*train, "--data", "data"],
                                             1: [*train, "--data", "other"]})
    assert done[0].returncode != 0 and done[1].returncode != 0
    line = (f'restorekit: error: rank {rank[1]} (node 1) was started with other options than '
            f'the main process: --data is "other" there but "data" on rank {rank[0]} (node 0); '
            f'start every node with the same options')
    assert error_lines(done[0].stderr)[0] == line, done[0].stderr[-3000:]
    assert "SIGABRT" not in done[0].stderr + done[1].stderr
    if launcher == "torchrun":  # torchrun's own report follows, quoting the line
        assert f"traceback : {line}" in done[1].stderr, done[1].stderr[-3000:]
    else:  # restorekit's launcher: that line once on both nodes, no Python traceback
        # (torch's elastic agent may add a C++ warning, "[c10d] recvVector failed ...
        # Connection was likely closed", when the other node's launcher closed its store first)
        for node in (0, 1):
            err = done[node].stderr
            assert err.count(line) == 1 and "Traceback" not in err, err[-3000:]
    assert not (work / "node0" / "runs" / "m").exists()


def test_two_nodes_given_the_same_node_rank_stop_with_one_line(work: Path) -> None:
    _nodes(work)
    train = ["run", "pix2pixhd", "--train", "--name", "d", "--data", "data", *TINY]
    done, _ = _two_nodes(work, "torchrun", {0: train, 1: train}, ranks=(0, 0))
    line = ("restorekit: error: --node-rank 0 was given to two nodes (ranks 0 and 1 both run "
            "as its local rank 0); start each node with its own torchrun --node-rank, 0 on the "
            "machine that keeps the run folder")
    for node in (0, 1):  # each node's local rank 0 says it, then torchrun's report
        assert done[node].returncode != 0
        assert error_lines(done[node].stderr)[0] == line, done[node].stderr[-3000:]
    assert not (work / "node0" / "runs" / "d").exists()


def test_several_nodes_need_their_launcher_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "pix2pixhd", "--train", "--nproc-per-node", "1", "--nnodes", "2"]) == 2
    assert "--nnodes: several nodes meet at --rdzv-endpoint HOST:PORT" in capsys.readouterr().err
    assert main(["run", "pix2pixhd", "--train", "--nproc-per-node", "1", "--nnodes", "2",
                 "--node-rank", "2", "--rdzv-endpoint", "127.0.0.1:1"]) == 2
    assert "--node-rank: expected 0 to 1 (--nnodes 2), got 2" in capsys.readouterr().err
    assert main(["run", "pix2pixhd", "--train", "--nproc-per-node", "1", "--nnodes", "2",
                 "--rdzv-endpoint", "127.0.0.1"]) == 2
    assert "--rdzv-endpoint 127.0.0.1: expected HOST:PORT" in capsys.readouterr().err
    assert main(["run", "pix2pixhd", "--train", "--node-rank", "1"]) == 2
    assert "go with --nproc-per-node" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_node_rank_is_read_from_the_torchrun_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.engine import distributed

    monkeypatch.delenv(distributed.ENV_NODE_RANK, raising=False)
    monkeypatch.setenv("GROUP_RANK", "1")  # what the c10d rendezvous said
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "/usr/local/bin/torchrun", "--nnodes", "2", "--node-rank", "3",
                                 "train.py", "--node-rank", "7"])
    cmdline = Path(f"/proc/{launcher.pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"torchrun" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # right after the fork, /proc shows no command line yet
    try:
        monkeypatch.setattr(os, "getppid", lambda: launcher.pid)
        assert distributed._node_rank() == 3
        monkeypatch.setattr(os, "getppid", os.getpid)  # pytest is no launcher: GROUP_RANK
        assert distributed._node_rank() == 1
        monkeypatch.setenv(distributed.ENV_NODE_RANK, "2")  # restorekit's launcher says
        assert distributed._node_rank() == 2
    finally:
        launcher.kill()
        launcher.wait()
