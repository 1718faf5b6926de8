"""Data-parallel training under ``torchrun``: one process per device, gradients averaged.

The engine owns all of it; a model plugin does nothing special. When ``torchrun`` (or
``restorekit run ... --train --nproc-per-node N``, which launches the same) starts the
processes, :func:`setup` joins the process group (``gloo`` for CPU tensors, ``nccl`` for
CUDA tensors) and every rank trains the same model on its own shard of each epoch's crops:

* **Gradients**: ``StepContextImpl.backward_step`` calls :meth:`Distributed.average_gradients`
  between ``backward()`` and the optimiser step: the stepped optimiser's gradients are
  flattened into buckets and all-reduced (sum / world size). Networks are not wrapped in
  ``DistributedDataParallel``: a model may call a network several times per step, freeze it
  with ``requires_grad_(False)`` for another network's step (Pix2PixHD's D during the G
  step) and keep graphs across two optimisers, all of which DDP's reducer only tolerates
  with ``find_unused_parameters=True`` (a graph walk every step) or ``static_graph``
  assumptions. Averaging exactly what the optimiser is about to step needs neither, and
  a parameter without a gradient on any rank stays without one (Adam skips it, as in
  one process). The price: communication does not overlap the backward pass. Averaging
  reads nothing back to the host (but in the rare steps that
  :meth:`Distributed.average_gradients` describes).
* **The main process** is local rank 0 of the node started with ``--node-rank 0`` (rank 0
  on one machine). torchrun's c10d rendezvous numbers nodes by host name and launcher pid,
  not by ``--node-rank``, so :func:`setup` gathers every rank's node and local rank and
  picks it explicitly: the run folder lands on the machine the user named node 0. "Rank 0"
  below means this process.
* **Options**: before the first collective that depends on them, the ranks compare a hash
  of their resolved options (:meth:`Distributed.agree`); ranks started with other options
  (a node launched by hand with another ``--data``) all stop with one line naming them.
* **Buffers** (BatchNorm statistics) are broadcast from rank 0 before every step, as DDP
  does with ``broadcast_buffers=True``; weights are broadcast once after building.
* **Data**: each epoch's permutation is cut into global batches of ``batch_size x world``
  crops; rank r takes the r-th slice of each, so no two ranks see the same crop in an
  epoch and the N ranks together see exactly what one process with batch ``N x b`` sees.
  Crops are seeded per sample (``TrainCrops``), so they do not depend on the rank.
* **Random numbers**: rank 0 keeps the run's seed (and, on resume, the checkpoint's RNG
  state, as in one process); rank r > 0 is reseeded from ``(seed, r, step)`` after
  building, so ranks draw distinct, reproducible streams. A checkpoint holds rank 0's
  states only, so that it resumes with any number of processes.
* **The run folder** is rank 0's alone: the other ranks never read or write it; rank 0
  reads checkpoints and broadcasts their tensors. Evaluation runs on rank 0 (the
  weights are the same on every rank, so the numbers are a single process's).
* **Agreement**: logged losses are averaged across ranks (a non-finite loss on any rank
  makes the average non-finite, so every rank stops at the same point, naming the same
  step), and the stop decisions (``max_minutes``, Ctrl-C) are all-reduced every
  :data:`STOP_EVERY` steps (a limit stops within that many steps); ``max_steps``, the same
  step on every rank, stops exactly there.
* **Failures**: a rank that raises records a one-line error in the job's store; a rank
  that dies is found by its pid. Rank 0 turns a failed collective (or torchrun's SIGTERM)
  into one line naming the rank and the error; under torchrun it also goes into
  torchrun's error file, so that torchrun's own failure report (which follows, and which
  no process it launched can suppress) quotes it. Collectives time out after
  ``RESTOREKIT_DIST_TIMEOUT`` seconds (default 1800), so a hung peer cannot hang a job.

Processes other than the main one print nothing (``RESTOREKIT_DIST_VERBOSE=1`` keeps their
output), except that a wrong ``--node-rank`` is said by each node's local rank 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from restorekit import errors
from restorekit.errors import DataError, RestorekitError, TrainingError, UsageError, one_line

ENV_TIMEOUT = "RESTOREKIT_DIST_TIMEOUT"
ENV_VERBOSE = "RESTOREKIT_DIST_VERBOSE"
ENV_REPORTED = "RESTOREKIT_DIST_REPORTED"
"""Set by :func:`launch`: a file rank 0 creates once it has printed the job's error line."""
ENV_NODE_RANK = "RESTOREKIT_NODE_RANK"
"""Set by :func:`launch` for its processes: the ``--node-rank`` it was given."""
MAX_NODES = 4096

BUCKET_BYTES = 25 * 1024 * 1024
"""Gradients are all-reduced in flat buckets of at most this size (DDP's default)."""

STOP_EVERY = 10
"""Under torchrun, the ranks agree whether to stop every this many steps (a collective)."""

_STORE_PREFIX = "restorekit/"


class PeerFailure(TrainingError):
    """A collective failed: another rank died, raised, or stopped answering."""


class Stopped(TrainingError):
    """This rank was sent SIGTERM (torchrun stops the others when one rank fails)."""


def launched() -> bool:
    """True inside a process started by torchrun (or with its environment variables set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def timeout() -> timedelta:
    """Timeout of process-group init and collectives (``RESTOREKIT_DIST_TIMEOUT`` seconds)."""
    raw = os.environ.get(ENV_TIMEOUT, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise UsageError(f"{ENV_TIMEOUT}: expected seconds, got {raw!r}") from None
    return timedelta(seconds=max(1.0, seconds))


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed python, numpy and torch for rank ``rank`` > 0 (rank 0 keeps the run's seed)."""
    value = int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


@dataclass
class Distributed:
    """The process group as one rank sees it; ``active`` is False for a lone process.

    Every method is a no-op (or the identity) when not active, so the trainer calls them
    unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False
    main: int = 0
    """The global rank of the main process: local rank 0 of the node started as node 0."""
    nodes: tuple[int, ...] = ()
    """Each global rank's node (``--node-rank``), as :func:`setup` gathered them."""

    @property
    def is_main(self) -> bool:
        """The one process that writes the run folder and prints (see :attr:`main`)."""
        return self.rank == self.main

    # -- devices -----------------------------------------------------------------------------
    def resolve_device(self, name: str, resolve: Callable[[str], torch.device]) -> torch.device:
        """``resolve(name)``; under torchrun ``auto``/``cuda`` mean ``cuda:LOCAL_RANK``."""
        if not self.active:
            return resolve(name)
        wanted = (name or "").strip().lower()  # empty: resolve refuses it
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda":
            wanted = f"cuda:{self.local_rank}"
        elif wanted.startswith("cuda:") and self.world_size > 1:
            raise UsageError(f"--device {name}: under torchrun each process uses "
                             f"cuda:LOCAL_RANK; pass --device cuda (or auto)")
        device = resolve(wanted)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def describe(self, batch_size: int) -> str:
        """One line on the process group and the effective batch (empty when not active)."""
        if not self.active:
            return ""
        backend = dist.get_backend()
        return (f"restorekit: distributed over {self.world_size} process(es) ({backend}): "
                f"batch {batch_size} per process, effective batch "
                f"{batch_size * self.world_size}")

    # -- rank 0 decides ----------------------------------------------------------------------
    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0 alone; its JSON-able result (or its error) on every rank."""
        if not self.active:
            return fn()
        payload: dict[str, Any] = {}
        failure: BaseException | None = None
        if self.is_main:
            try:
                payload = {"value": fn()}
            except Exception as exc:
                failure = exc
                kind = type(exc).__name__ if isinstance(exc, RestorekitError) else \
                    "RestorekitError"
                payload = {"error": one_line(exc, with_type=False), "kind": kind}
        payload = self.broadcast_json(payload)
        if failure is not None:
            raise failure
        if "error" in payload:
            cls = getattr(errors, payload["kind"], RestorekitError)
            raise cls(payload["error"])
        return payload["value"]

    def broadcast_json(self, value: Any, src: int | None = None) -> Any:
        """Rank ``src``'s (default: the main's) JSON-able ``value`` on every rank, no pickle."""
        if not self.active:
            return value
        src = self.main if src is None else src
        data = json.dumps(value).encode() if self.rank == src else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        self._collective(dist.broadcast, size, src=src)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.rank == src:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self._collective(dist.broadcast, buffer, src=src)
        return json.loads(bytes(buffer.numpy()).decode())

    def agree(self, options: dict[str, Any]) -> None:
        """Stop every rank with one line naming the options the ranks were started with apart.

        ``options`` maps each option's name (as the user writes it) to its resolved,
        JSON-able value. The ranks compare a hash of it first; when one differs, the main
        process's options and those of the first rank that differs travel to every rank,
        which all raise the same ``UsageError``. Call it before any collective whose shape
        depends on the options.
        """
        if not self.active:
            return
        text = json.dumps(options, sort_keys=True, default=str)
        digest = torch.frombuffer(bytearray(hashlib.sha256(text.encode()).digest()),
                                  dtype=torch.uint8)
        every = [torch.empty_like(digest) for _ in range(self.world_size)]
        self._collective(dist.all_gather, every, digest)
        other = next((r for r, d in enumerate(every) if not torch.equal(d, every[self.main])),
                     None)
        if other is None:
            return
        ours = self.broadcast_json(json.loads(text))
        theirs = self.broadcast_json(json.loads(text), src=other)
        differ = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
        shown = "; ".join(f"{k} is {_shown(theirs.get(k))} there but {_shown(ours.get(k))} on "
                          f"{self._where(self.main)}" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise UsageError(f"{self._where(other)} was started with other options than the main "
                         f"process: {shown}{more}; start every node with the same options")

    def _where(self, rank: int) -> str:
        """'rank R (node N)': torchrun's rank and the node it runs on."""
        node = f" (node {self.nodes[rank]})" if rank < len(self.nodes) else ""
        return f"rank {rank}{node}"

    def read_checkpoint(self, read: Callable[[], tuple[dict[str, torch.Tensor], dict]]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``read()`` on rank 0 (tensors on CPU, metadata), broadcast to every rank."""
        if not self.active:
            return read()
        held: dict[str, torch.Tensor] = {}

        def manifest_of_read() -> dict[str, Any]:
            tensors, meta = read()
            held.update(tensors)
            return {"meta": meta, "tensors": [[k, str(v.dtype).removeprefix("torch."),
                                               list(v.shape)] for k, v in tensors.items()]}

        manifest = self.from_main(manifest_of_read)
        received: dict[str, torch.Tensor] = {}
        for key, dtype, shape in manifest["tensors"]:
            value = held[key].contiguous() if self.is_main else \
                torch.empty(shape, dtype=getattr(torch, dtype))
            self._collective(dist.broadcast, value, src=self.main)
            received[key] = value
        return received, manifest["meta"]

    # -- model state -------------------------------------------------------------------------
    def after_build(self, networks: dict[str, torch.nn.Module], seed: int, step: int = 0
                    ) -> None:
        """Give every rank rank 0's weights and buffers; reseed ranks > 0."""
        if not self.active:
            return
        self._broadcast(list(_states(networks, buffers=True, params=True)))
        if not self.is_main:
            seed_rank(seed, self.rank, step)

    def sync_buffers(self, networks: dict[str, torch.nn.Module]) -> None:
        """Rank 0's buffers (e.g. BatchNorm statistics) on every rank, as DDP does per step."""
        if self.active:
            self._broadcast(list(_states(networks, buffers=True, params=False)))

    def restore_rng(self, restore: Callable[[], None], seed: int, step: int) -> None:
        """Rank 0 restores the checkpoint's RNG states; ranks > 0 reseed from (seed, rank, step)."""
        if self.is_main:
            restore()
        else:
            seed_rank(seed, self.rank, step)

    def position_in_epoch(self, meta: dict[str, Any]) -> int:
        """The checkpoint's ``step_in_epoch`` in batches of this run's world size.

        Steps are global batches of ``batch_size x world``; resumed with another number of
        processes, a mid-epoch position is rounded down (the crops of at most one global
        batch are seen twice in that epoch). At an epoch's end it is exact.
        """
        saved = int(meta.get("world_size", 1))
        steps = int(meta["step_in_epoch"])
        if saved != self.world_size and self.is_main:
            errors.warn(f"the run was saved with {saved} process(es) and continues with "
                        f"{self.world_size}: the effective batch changes by "
                        f"{self.world_size}/{saved}")
        return steps * saved // self.world_size

    # -- data --------------------------------------------------------------------------------
    def shard(self, order: Sequence[int], batch_size: int) -> list[list[int]]:
        """This rank's batches of an epoch: slice ``rank`` of each global batch of ``order``."""
        step = batch_size * self.world_size
        if self.active and len(order) < step:
            raise DataError(f"{len(order)} crops per epoch cannot fill one batch of "
                            f"{batch_size} on each of {self.world_size} processes; raise "
                            f"--samples-per-epoch or lower --batch-size")
        per_epoch = max(1, len(order) // step)
        start = self.rank * batch_size
        return [list(order[b * step + start:b * step + start + batch_size])
                for b in range(per_epoch)]

    # -- gradients, losses, decisions ---------------------------------------------------------
    def average_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients of ``optimizer``'s parameters over the ranks, in buckets.

        Every rank averages every parameter that requires a gradient, with zeros where it
        has none, so the ranks run the same collectives without first agreeing (on the
        host) on who has which gradient. A parameter no rank has a gradient for stays
        without one (the optimiser skips it, as in one process): a rank that had none
        reads whether another had, the only host read here, in such steps alone.
        """
        if not self.active:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.requires_grad]
        if not params:
            return
        present = torch.ones(len(params), dtype=torch.int32, device=params[0].device)
        missing = []
        for i, p in enumerate(params):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
                present[i] = 0
                missing.append(i)
            elif p.grad.is_sparse:
                raise TrainingError("distributed training does not support sparse gradients")
        self._collective(dist.all_reduce, present)
        for bucket in _buckets([p.grad for p in params]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            self._collective(dist.all_reduce, flat)
            flat.div_(self.world_size)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))
        if missing:
            anywhere = present[missing].tolist()
            for i, count in zip(missing, anywhere, strict=True):
                if not count:
                    params[i].grad = None

    def reduce_losses(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms averaged over the ranks (non-finite if any rank's is)."""
        if not self.active or not terms:
            return terms
        names = list(terms)
        stacked = torch.stack([torch.as_tensor(terms[n]).detach().float().reshape(())
                               for n in names])
        self._collective(dist.all_reduce, stacked)
        stacked.div_(self.world_size)
        return dict(zip(names, stacked.unbind(), strict=True))

    def stop_due(self, step: int) -> bool:
        """Whether the ranks compare their stop reasons after ``step``: every step in one
        process (no collective), every :data:`STOP_EVERY` steps under torchrun."""
        return not self.active or step % STOP_EVERY == 0

    def agree_stop(self, reason: str | None) -> str | None:
        """Stop when any rank wants to (ranks' clocks and Ctrl-Cs differ): the common reason."""
        if not self.active:
            return reason
        order = (None, "max_steps", "max_minutes", "interrupted")
        code = torch.tensor([order.index(reason) if reason in order else 3], dtype=torch.int32)
        self._collective(dist.all_reduce, code, op=dist.ReduceOp.MAX)
        return order[int(code.item())]

    # -- failures ----------------------------------------------------------------------------
    def failure(self, exc: BaseException, epoch: int, step: int,
                checkpoint: Path | None) -> BaseException:
        """The exception to raise for ``exc``: a peer's failure becomes one line naming it.

        A rank's own error is recorded in the job's store (rank 0 names it when it learns
        of it) and returned unchanged.
        """
        if not self.active:
            return exc
        _ignore_sigterm()  # torchrun's SIGTERM, sent once it sees a dead rank, cuts nothing short
        where = (f"at epoch {epoch + 1}, step {step + 1}; "
                 + (f"the last good checkpoint is {checkpoint}; continue with --resume"
                    if checkpoint else "no checkpoint was saved yet"))
        if isinstance(exc, (PeerFailure, Stopped)):
            culprit = self._culprit()
            if culprit:
                return TrainingError(f"{culprit}; training stopped {where}")
            return TrainingError(f"{exc} {where}")
        self._store_set(f"error/{self.rank}", one_line(exc))
        return exc

    def _culprit(self, wait: float = 2.0) -> str | None:
        """'rank R: error' for a rank that raised, or 'rank R died ...' for a dead one."""
        store = _store()
        if store is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            for rank in range(self.world_size):
                if rank != self.rank and _check(store, f"error/{rank}"):
                    message = store.get(f"{_STORE_PREFIX}error/{rank}").decode()
                    return f"rank {rank} failed: {message}"
            for rank in range(self.world_size):
                if rank != self.rank and _check(store, f"proc/{rank}"):
                    host, pid = store.get(f"{_STORE_PREFIX}proc/{rank}").decode().split()
                    if host == socket.gethostname() and not _alive(int(pid)):
                        return (f"rank {rank} died (process {pid} killed or crashed without "
                                f"an error message)")
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def _store_set(self, key: str, value: str) -> None:
        store = _store()
        if store is not None:
            with contextlib.suppress(Exception):  # the store's host is gone: nobody to tell
                store.set(_STORE_PREFIX + key, value)

    # -- plumbing ----------------------------------------------------------------------------
    def _collective(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as exc:
            raise PeerFailure(f"a peer rank failed or stopped answering "
                              f"({one_line(exc, with_type=False)[:300]})") from None

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        for bucket in _buckets(tensors):
            flat = torch.cat([t.detach().reshape(-1) for t in bucket])
            self._collective(dist.broadcast, flat, src=self.main)
            if not self.is_main:
                with torch.no_grad():
                    for t, part in zip(bucket, flat.split([t.numel() for t in bucket]),
                                       strict=True):
                        t.copy_(part.view_as(t))


def _states(networks: dict[str, torch.nn.Module], *, buffers: bool,
            params: bool) -> Iterable[torch.Tensor]:
    for name in sorted(networks):
        net = networks[name]
        if params:
            yield from (p.data for p in net.parameters())
        if buffers:
            yield from net.buffers()


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive runs of one device and dtype, each at most :data:`BUCKET_BYTES`."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = buckets[-1] if buckets else None
        if (last is None or last[0].dtype != t.dtype or last[0].device != t.device
                or size + nbytes > BUCKET_BYTES):
            buckets.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return buckets


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _check(store: Any, key: str) -> bool:
    try:
        return bool(store.check([_STORE_PREFIX + key]))
    except Exception:
        return False


def _shown(value: Any) -> str:
    """A value for an error line: JSON, cut at 60 characters."""
    text = "not given" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by torchrun is a zombie
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


# -- the process group -----------------------------------------------------------------------
_CURRENT = Distributed()


def current() -> Distributed:
    """This process's :class:`Distributed` (not active unless :func:`setup` joined a group)."""
    return _CURRENT


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped("training stopped by SIGTERM (from torchrun when another rank failed, or "
                  "from outside)")


def setup() -> Distributed:
    """Join torchrun's process group once (a no-op outside torchrun); the rank's view of it.

    CPU tensors travel over gloo and CUDA tensors over NCCL. Ranks > 0 then print nothing
    unless ``RESTOREKIT_DIST_VERBOSE=1``.
    """
    global _CURRENT
    if _CURRENT.active or not launched():
        return _CURRENT
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, timeout=timeout())
        except (RuntimeError, ValueError, dist.DistError) as exc:
            raise TrainingError(f"rank {rank}: cannot join the process group "
                                f"({one_line(exc, with_type=False)[:300]})") from None
    here = Distributed(rank=rank, world_size=world, local_rank=local, active=True)
    here._store_set(f"proc/{rank}", f"{socket.gethostname()} {os.getpid()}")
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, _on_sigterm)
    places = torch.tensor([_node_rank(), local], dtype=torch.int64)
    every = [torch.empty_like(places) for _ in range(world)]
    here._collective(dist.all_gather, every, places)
    here.nodes = tuple(int(t[0]) for t in every)
    where = [(int(t[0]), int(t[1])) for t in every]
    quiet = os.environ.get(ENV_VERBOSE, "") not in ("1", "true", "yes")
    if quiet and local != 0:
        _silence()  # a wrong --node-rank is said once per node, by its local rank 0
    for r, place in enumerate(where):
        if place in where[:r]:
            raise UsageError(f"--node-rank {place[0]} was given to two nodes (ranks "
                             f"{where.index(place)} and {r} both run as its local rank "
                             f"{place[1]}); start each node with its own torchrun "
                             f"--node-rank, 0 on the machine that keeps the run folder")
    if (0, 0) not in where:
        raise UsageError(f"no node was started with --node-rank 0 (nodes "
                         f"{', '.join(map(str, sorted(set(here.nodes))))}); the node started "
                         f"with --node-rank 0 owns the run folder")
    here.main = where.index((0, 0))
    _CURRENT = here
    if quiet and local == 0 and not here.is_main:
        _silence()
    return _CURRENT


def _silence() -> None:
    """Send this process's output to /dev/null (ranks other than the main print nothing)."""
    devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (process lifetime)
    sys.stdout = sys.stderr = devnull


def _node_rank() -> int:
    """This node's rank as the user gave it to torchrun (``--node-rank``, ``PET_NODE_RANK``).

    torchrun's c10d rendezvous numbers the nodes its own way (by host name and process id)
    and passes the given ``--node-rank`` to no one, so it is read from the launcher's
    command line with torchrun's own parser; elsewhere (a static rendezvous, restorekit's
    own launcher, another launcher) it is ``GROUP_RANK``.
    """
    if ENV_NODE_RANK in os.environ:  # restorekit's own launcher
        return int(os.environ[ENV_NODE_RANK])
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except (OSError, UnicodeDecodeError):
        argv = []
    for i, word in enumerate(argv[:-1]):
        if Path(word).name == "torchrun" or (word == "torch.distributed.run"
                                              and argv[i - 1] == "-m"):
            from torch.distributed.run import parse_args

            with open(os.devnull, "w", encoding="utf-8") as devnull, \
                    contextlib.redirect_stderr(devnull), \
                    contextlib.suppress(SystemExit, ValueError):  # a launcher we do not know
                return int(parse_args(argv[i + 1:]).node_rank)
            break
    return int(os.environ.get("GROUP_RANK", "0"))


def shutdown() -> None:
    """Leave the process group joined by :func:`setup` (if any)."""
    global _CURRENT
    if _CURRENT.active and dist.is_initialized():
        with contextlib.suppress(Exception):  # a dead peer: the process ends anyway
            dist.destroy_process_group()
    _CURRENT = Distributed()
    # The run has ended and reported any error: torchrun's SIGTERM to the ranks left over
    # must not raise Stopped into the interpreter's teardown (a traceback after the one line).
    _ignore_sigterm()


def _ignore_sigterm() -> None:
    """The job is ending: from now on SIGTERM no longer raises :class:`Stopped`."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def reported(exc: BaseException, line: str) -> None:
    """This process stops with ``exc``, printed as ``line``: tell the launcher.

    Under :func:`launch` the main process marks that it printed the job's line, so that
    the launcher prints no other. Every process also writes the error into the error file
    the launcher gives it (``TORCHELASTIC_ERROR_FILE``): torchrun's failure report then
    quotes the line instead of pointing at its documentation, and :func:`launch` on a node
    whose processes print nothing says it.
    """
    path = os.environ.get(ENV_REPORTED)
    if path and current().is_main:
        Path(path).touch()
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and launched():
        record = {"message": str(exc), "extraInfo": {"py_callstack": line,
                                                      "timestamp": str(int(time.time()))}}
        with contextlib.suppress(OSError):  # the report then says less, nothing worse
            Path(error_file).write_text(json.dumps({"message": record}), encoding="utf-8")


# -- launching -------------------------------------------------------------------------------
def launch(nproc: int, argv: Sequence[str], nnodes: int = 1, node_rank: int = 0,
           endpoint: str | None = None) -> int:
    """Run ``python ARGV`` in ``nproc`` processes on this machine, as torchrun would.

    Uses ``torch.distributed``'s elastic launcher in this process (a c10d rendezvous, no
    restarts): on localhost, or with ``nnodes`` > 1 at ``endpoint`` (``HOST:PORT``, the
    same on every node), where the node given ``node_rank`` 0 keeps the run folder.
    ``OMP_NUM_THREADS`` defaults to the CPU count / ``nproc``. Returns 0, or 1 when the
    main process reported the failure; otherwise a failed rank is a one-line
    ``TrainingError`` (its own error when it recorded one).
    """
    import logging
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UsageError(f"--nproc-per-node: expected at least 1, got {nproc}")
    if not 1 <= nnodes <= MAX_NODES:
        raise UsageError(f"--nnodes: expected 1 to {MAX_NODES}, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank: expected 0 to {nnodes - 1} (--nnodes {nnodes}), "
                         f"got {node_rank}")
    if nnodes > 1 and not endpoint:
        raise UsageError("--nnodes: several nodes meet at --rdzv-endpoint HOST:PORT (node "
                         "0's address and a free port, the same on every node)")
    if endpoint is not None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rdzv-endpoint {endpoint}: expected HOST:PORT, a port from 1 "
                             f"to 65535")
    for name in list(logging.root.manager.loggerDict):  # rank 0 says what went wrong
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The workers run in sessions of their own: the agent relays Ctrl-C (once) and SIGTERM
    # to them, then waits up to shutdown_timeout for them to finish the step and save.
    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc,
                          run_id="restorekit" if nnodes > 1 else str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint=endpoint or "localhost:0",
                          max_restarts=0, monitor_interval=0.1, shutdown_timeout=120)
    with tempfile.TemporaryDirectory(prefix="restorekit-launch-") as tmp:
        marker = Path(tmp) / "reported"
        old = {name: os.environ.get(name) for name in (ENV_REPORTED, ENV_NODE_RANK)}
        os.environ[ENV_REPORTED] = str(marker)
        os.environ[ENV_NODE_RANK] = str(node_rank)
        try:
            elastic_launch(config, sys.executable)(*argv)
        except SignalException as exc:  # relayed to the workers; rank 0 said what happened
            if exc.sigval == signal.SIGINT:
                return 130
            if marker.exists():
                return 1
            raise TrainingError(f"training stopped by {signal.Signals(exc.sigval).name}") \
                from None
        except ChildFailedError as exc:
            if marker.exists():
                return 1
            if all(f.exitcode == 130 for f in exc.failures.values()):
                return 130  # interrupted; rank 0 printed how to continue
            recorded = [f.message["message"] for f in exc.failures.values()
                        if isinstance(f.message, dict) and "message" in f.message]
            if recorded:  # a process that prints nothing (on another node) said why
                raise TrainingError(recorded[0]) from None
            rank, failure = exc.get_first_failure()
            if failure.exitcode < 0:
                try:
                    how = f"was killed by {signal.Signals(-failure.exitcode).name}"
                except ValueError:
                    how = f"was killed by signal {-failure.exitcode}"
            else:
                how = f"exited with status {failure.exitcode}"
            raise TrainingError(f"rank {rank} (process {failure.pid}) {how}; see its "
                                f"output above") from None
        finally:
            for name, value in old.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return 0


__all__ = ["Distributed", "PeerFailure", "Stopped", "current", "launch", "launched",
           "reported", "setup", "shutdown"]
