"""What a checkpoint holds, in one place: :class:`TrainState`, captured and restored side by side.

A checkpoint (the container is :mod:`restorekit.engine.checkpoint`) holds:

* the model's networks (tensors ``net.<name>.<key>``) and optimisers (``optim.<name>.*``, param
  groups in the JSON), its name, options and preprocessing (a lone file describes itself);
* the loop's counters (``epoch``, ``step``, ``step_in_epoch``), the loss window in progress,
  the GradScalers (fp16), the RNG states (``rng.torch``, ``rng.cuda.<i>``, python and numpy in
  the JSON), the number of processes it was saved with, the last evaluation's metrics and
  the best-by-metric record on the validation split ``{"metric", "higher_is_better",
  "value", "step"}``;
* registered stateful parts (``parts``; tensors ``part.<name>.<path>``): anything with
  ``state_dict()``/``load_state_dict()`` that a model lists in ``TrainableModel.stateful()``
  (a learning-rate scheduler, an EMA of the weights) or that :meth:`TrainState.register`
  is given, in the style of accelerate's ``register_for_checkpointing``.

The metadata is versioned (``format``): a checkpoint written by an older version is brought
up to :data:`FORMAT_VERSION` on read by the functions of :data:`MIGRATIONS`, one version at
a time; a newer one is refused with one line. Changing what a checkpoint holds means
editing this module: :meth:`TrainState.capture`, :meth:`TrainState.restore`,
:data:`FIELDS`, and a migration when the format changes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from restorekit._version import __version__
from restorekit.api import TrainableModel
from restorekit.engine import checkpoint as container
from restorekit.engine.optimizers import IMPLEMENTATION_FLAGS
from restorekit.errors import CheckpointError

FORMAT_VERSION = 3
"""The metadata format :meth:`TrainState.capture` writes (``meta["format"]``)."""

Tensors = dict[str, torch.Tensor]
Migration = Callable[[Tensors, dict[str, Any]], None]


class Stateful(Protocol):
    """What a registered part needs (``torch.optim.lr_scheduler``, an EMA, ...)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


# -- format versions -------------------------------------------------------------------------
def _v1_to_v2(tensors: Tensors, meta: dict[str, Any]) -> None:
    """Version 1 (restorekit <= 0.x): best was PSNR only (``best_psnr``); no parts."""
    best = meta.pop("best_psnr", None)
    meta["best"] = None if best is None else {"metric": "psnr", "higher_is_better": True,
                                              "value": best, "step": None}
    meta.setdefault("parts", {})


RENAMED_OPTIONS = {"best_metric": "select_metric"}
"""Training options stored under an older name (checkpoints, ``config.json`` files)."""


def renamed_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each old name of :data:`RENAMED_OPTIONS` replaced by the new one
    (a value stored under the new name wins)."""
    out = dict(options)
    for old, new in RENAMED_OPTIONS.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    return out


def _v2_to_v3(tensors: Tensors, meta: dict[str, Any]) -> None:
    """Version 2: the option choosing ``best`` was ``best_metric`` (now ``select_metric``,
    evaluated on the validation split)."""
    if isinstance(meta.get("options"), dict):
        meta["options"] = renamed_options(meta["options"])


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3}
"""``MIGRATIONS[v]`` turns version ``v``'s ``(tensors, meta)`` into version ``v + 1``'s, in place.
When only the metadata is read, ``tensors`` is empty: a migration renaming tensors must
not require them."""


def upgrade(path: Path, tensors: Tensors, meta: dict[str, Any]) -> None:
    """Bring ``meta`` (and ``tensors``) of ``path`` to :data:`FORMAT_VERSION`, in place.

    A newer format is a one-line ``CheckpointError``; a file without ``format`` predates
    the field (version 1).
    """
    version = meta.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: checkpoint metadata field 'format' must be a version "
                              f"number, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this "
                              f"restorekit ({__version__}) reads (format {FORMAT_VERSION}); "
                              f"upgrade restorekit")
    while version < FORMAT_VERSION:
        MIGRATIONS[version](tensors, meta)
        version += 1
    meta["format"] = version


# -- validation ------------------------------------------------------------------------------
_INT = (int,)
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a model name"),
    "options": ((dict,), "an object"),
    "preprocess": ((str,), "a pipeline spec"),
    "optimizers": ((dict,), "an object"),
    "epoch": (_INT, "an integer"),
    "step": (_INT, "an integer"),
    "step_in_epoch": (_INT, "an integer"),
    "best": ((dict, type(None)), "an object or null"),
    "metrics": ((dict, type(None)), "an object"),
    "scalers": ((dict,), "an object"),
    "rng": ((dict,), "an object"),
    "loss_window": ((dict,), "an object"),
    "parts": ((dict,), "an object"),
    "world_size": (_INT, "an integer"),
}
"""Metadata fields and their JSON types (checked on every read)."""


def check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """A one-line ``CheckpointError`` naming the file and the first malformed field."""
    if not isinstance(meta.get("model"), str):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (no model name)")
    for key, (types, what) in FIELDS.items():
        if key not in meta:
            continue
        value = meta[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(f"{path}: checkpoint metadata field {key!r} must be {what}, "
                                  f"got {value!r}"[:300])
    for key in ("epoch", "step", "step_in_epoch"):
        if isinstance(meta.get(key), int) and meta[key] < 0:
            raise CheckpointError(f"{path}: checkpoint metadata field {key!r} must be >= 0, "
                                  f"got {meta[key]!r}")
    best = meta.get("best")
    if best is not None and not (isinstance(best.get("metric"), str)
                                 and isinstance(best.get("higher_is_better"), bool)):
        raise CheckpointError(f"{path}: checkpoint metadata field 'best' is malformed")


def check_resumable(path: Path, meta: dict[str, Any]) -> None:
    """A one-line ``CheckpointError`` when ``meta`` lacks what resuming training needs."""
    for key in ("epoch", "step", "step_in_epoch", "rng", "optimizers"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata has no field {key!r}; it "
                                  f"cannot be resumed (a converted or foreign checkpoint?)")
    rng = meta["rng"]
    if not (isinstance(rng.get("python"), list) and len(rng["python"]) == 3
            and isinstance(rng.get("numpy"), list) and len(rng["numpy"]) == 5):
        raise CheckpointError(f"{path}: checkpoint metadata field 'rng' is malformed")
    for name, entry in meta["optimizers"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("param_groups"), list)
                and isinstance(entry.get("state"), dict)):
            raise CheckpointError(f"{path}: checkpoint metadata field 'optimizers.{name}' "
                                  f"is malformed")


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read once: its file, tensors (on CPU) and metadata (current format)."""

    path: Path
    tensors: Tensors
    meta: dict[str, Any]


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint file: tensors checked finite, metadata upgraded and checked."""
    path = Path(path)
    tensors, meta = container.read_file(path)
    upgrade(path, tensors, meta)
    check_metadata(path, meta)
    return Checkpoint(path, tensors, meta)


def read_checkpoint(path: str | Path) -> tuple[Tensors, dict[str, Any]]:
    """All tensors (on CPU) and the metadata (current format) of a checkpoint file."""
    loaded = load(path)
    return loaded.tensors, loaded.meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata (current format) of a checkpoint file; tensors are not read."""
    path = Path(path)
    meta = container.read_header(path)
    upgrade(path, {}, meta)
    check_metadata(path, meta)
    return meta


def load_resumable(candidates: list[Path], warn: Callable[[str], None] | None = None
                   ) -> Checkpoint:
    """The first of ``candidates`` (newest first) that reads, is finite and can be resumed.

    Each unusable one is reported through ``warn`` (if given) once a usable one is found;
    with none usable, a one-line ``CheckpointError`` with the first problem.
    """
    problems = []
    for path in candidates:
        try:
            loaded = load(path)
            check_resumable(path, loaded.meta)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        for problem in problems if warn is not None else []:
            warn(f"{problem}; resuming from {path.name} instead")
        return loaded
    folder = candidates[0].parent if candidates else Path(".")
    raise CheckpointError(f"--resume: no usable checkpoint in {folder}: {problems[0]}")


# -- the best-by-metric record ---------------------------------------------------------------
@dataclass
class Best:
    """The best value of ``metric`` seen so far and the step it was seen at."""

    metric: str
    higher_is_better: bool
    value: float | None = None
    step: int | None = None

    def improves(self, value: float | None) -> bool:
        """Whether ``value`` (finite) beats the record."""
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.higher_is_better else value < self.value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- networks and optimisers ------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def capture_options(model: TrainableModel) -> dict[str, Any]:
    """The model's options as JSON-ready values."""
    if dataclasses.is_dataclass(model.options) and not isinstance(model.options, type):
        return _json_value(dataclasses.asdict(model.options))
    return {}


def _split_tensors(prefix: str, values: dict[str, Any], tensors: Tensors) -> dict[str, Any]:
    """JSON-ready ``values``; tensors go to ``tensors[prefix + key]``, marked in the JSON."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value
            plain[key] = {"tensor": True}
        else:
            plain[key] = _json_value(value)
    return plain


def _capture_optimizer(name: str, opt: torch.optim.Optimizer, tensors: Tensors) -> dict:
    state = opt.state_dict()
    groups = [_split_tensors(f"optim.{name}.group.{g}.", group, tensors)
              for g, group in enumerate(state["param_groups"])]
    entries = {str(index): _split_tensors(f"optim.{name}.state.{index}.", entry, tensors)
               for index, entry in state["state"].items()}
    return {"param_groups": groups, "state": entries}


def check_model(path: Path, meta: dict[str, Any], model: TrainableModel) -> None:
    """A ``CheckpointError`` naming both models when ``meta`` is another model's."""
    if meta.get("model") != type(model).name:
        raise CheckpointError(f"{path}: checkpoint of model {meta.get('model')!r}, "
                              f"not of model {type(model).name!r}")


def restore_networks(path: Path, tensors: Tensors, model: TrainableModel) -> None:
    """Load every network's weights, checking names and shapes first."""
    for name, net in model.networks().items():
        prefix = f"net.{name}."
        current = net.state_dict()
        loaded = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        for key, value in current.items():
            if key not in loaded:
                raise CheckpointError(f"{path}: tensor {prefix + key!r} is missing from "
                                      f"the checkpoint")
            if tuple(loaded[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: tensor {prefix + key!r} has shape {tuple(loaded[key].shape)} in "
                    f"the checkpoint but {tuple(value.shape)} in the model")
        extra = sorted(set(loaded) - set(current))
        if extra:
            raise CheckpointError(f"{path}: tensor {prefix + extra[0]!r} in the checkpoint "
                                  f"is not in the model")
        net.load_state_dict(loaded, strict=True)


def restore_optimizers(path: Path, tensors: Tensors, meta: dict[str, Any],
                       model: TrainableModel) -> None:
    """Load every optimiser's state (param groups and per-parameter tensors)."""
    saved = meta.get("optimizers", {})
    for name, opt in model.optimizers().items():
        if name not in saved:
            raise CheckpointError(f"{path}: optimizer {name!r} is missing from the checkpoint")
        entry = saved[name]
        if len(entry["param_groups"]) != len(opt.param_groups):
            raise CheckpointError(f"{path}: optimizer {name!r} has {len(opt.param_groups)} "
                                  f"parameter group(s), the checkpoint "
                                  f"{len(entry['param_groups'])}")
        groups = []
        for g, (plain, current) in enumerate(zip(entry["param_groups"], opt.param_groups,
                                                 strict=True)):
            group = {}
            for key, value in plain.items():
                if isinstance(value, dict) and value.get("tensor"):
                    value = _tensor(path, tensors, f"optim.{name}.group.{g}.{key}")
                elif isinstance(value, list) and isinstance(current.get(key), tuple):
                    value = tuple(value)
                group[key] = value
            # How the optimiser runs (fused kernels, capturable) is this run's choice.
            group.update({k: current[k] for k in IMPLEMENTATION_FLAGS if k in current})
            groups.append(group)
        state: dict[int, dict[str, Any]] = {}
        for index, plain in entry["state"].items():
            values = {}
            for key, value in plain.items():
                if isinstance(value, dict) and value.get("tensor"):
                    value = _tensor(path, tensors, f"optim.{name}.state.{index}.{key}")
                values[key] = value
            state[int(index)] = values
        try:
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: optimizer {name!r} does not match the model "
                                  f"({' '.join(str(exc).split())})") from None


def _tensor(path: Path, tensors: Tensors, key: str) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(f"{path}: tensor {key!r} is missing from the checkpoint")
    return tensors[key]


# -- registered parts: any state_dict, tensors split out ---------------------------------------
_TENSOR, _ITEMS, _TUPLE = "__tensor__", "__items__", "__tuple__"


def _encode(prefix: str, value: Any, tensors: Tensors) -> Any:
    """``value`` as JSON: tensors go to ``tensors`` under ``prefix``-based names."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value
        return {_TENSOR: prefix}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(f"{prefix}.{k}", v, tensors) for k, v in value.items()}
        return {_ITEMS: [[k, _encode(f"{prefix}.{k}", v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _decode(path: Path, value: Any, tensors: Tensors) -> Any:
    if isinstance(value, list):
        return [_decode(path, v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return _tensor(path, tensors, value[_TENSOR])
    if _ITEMS in value:
        return {k: _decode(path, v, tensors) for k, v in value[_ITEMS]}
    if _TUPLE in value:
        return tuple(_decode(path, v, tensors) for v in value[_TUPLE])
    return {k: _decode(path, v, tensors) for k, v in value.items()}


def restore_parts(path: Path, tensors: Tensors, meta: dict[str, Any],
                  parts: dict[str, Stateful]) -> None:
    """Load each registered part's state; a part the checkpoint lacks is an error."""
    saved = meta.get("parts") or {}
    for name, part in parts.items():
        if name not in saved:
            raise CheckpointError(f"{path}: state {name!r} is missing from the checkpoint "
                                  f"(saved: {', '.join(sorted(saved)) or 'none'})")
        try:
            part.load_state_dict(_decode(path, saved[name], tensors))
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path}: state {name!r} does not match the model "
                                  f"({' '.join(str(exc).split())})") from None


def restore_model(loaded: Checkpoint, model: TrainableModel) -> None:
    """The weights of a built ``model`` and its registered parts, for inference."""
    check_model(loaded.path, loaded.meta, model)
    restore_networks(loaded.path, loaded.tensors, model)
    restore_parts(loaded.path, loaded.tensors, loaded.meta, dict(model.stateful()))


# -- random number generators ----------------------------------------------------------------
def capture_rng(tensors: Tensors) -> dict[str, Any]:
    """Python/numpy RNG states as JSON; torch (and CUDA) states as uint8 tensors."""
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def cuda_rng_states(tensors: Tensors) -> list[torch.Tensor]:
    """The ``rng.cuda.<i>`` states in device order (numeric: 2 before 10)."""
    keys = [k for k in tensors if k.startswith("rng.cuda.")]
    return [tensors[k] for k in sorted(keys, key=lambda k: int(k.rsplit(".", 1)[1]))]


def restore_rng(tensors: Tensors, rng: dict[str, Any]) -> None:
    """Restore the RNG states written by :func:`capture_rng`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = cuda_rng_states(tensors)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (all devices) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the training state ------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a checkpoint holds about a run in progress, captured and restored here.

    ``model`` gives the networks, optimisers and (``stateful()``) parts; ``scalers`` are
    the step's GradScalers by optimiser name; ``parts`` are registered stateful objects.
    """

    model: TrainableModel
    scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict)
    world_size: int = 1
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    window: tuple[dict[str, float], int] = field(default_factory=lambda: ({}, 0))
    """Loss sums and count of the log window in progress (the first record after a resume
    averages the whole window); the loop sums on the device and sets this when it saves."""
    best: Best | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    parts: dict[str, Stateful] = field(default_factory=dict)

    def register_model_parts(self) -> None:
        """Register the built model's ``stateful()`` parts."""
        for name, part in self.model.stateful().items():
            self.register(name, part)

    def register(self, name: str, part: Stateful) -> None:
        """Checkpoint ``part`` (``state_dict()``/``load_state_dict()``) under ``name``."""
        if not (callable(getattr(part, "state_dict", None))
                and callable(getattr(part, "load_state_dict", None))):
            raise TypeError(f"state {name!r}: {type(part).__name__} has no state_dict() and "
                            f"load_state_dict()")
        self.parts[name] = part

    def capture(self, *, training: bool = True) -> tuple[Tensors, dict[str, Any]]:
        """Tensors and JSON metadata of the whole state; ``training=False``: the weights,
        parts and counters only (no optimisers, scalers or RNG: not resumable)."""
        model = self.model
        tensors: Tensors = {}
        for name, net in model.networks().items():
            for key, value in net.state_dict().items():
                tensors[f"net.{name}.{key}"] = value
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "model": type(model).name,
            "options": capture_options(model),
            "preprocess": str(model.preprocess),
            "networks": sorted(model.networks()),
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "parts": {name: _encode(f"part.{name}", part.state_dict(), tensors)
                      for name, part in self.parts.items()},
            "restorekit_version": __version__, "torch_version": torch.__version__,
            "saved_at": container.timestamp(),
        }
        if training:
            meta.update({
                "optimizers": {name: _capture_optimizer(name, opt, tensors)
                               for name, opt in model.optimizers().items()},
                "best": self.best.to_dict() if self.best is not None else None,
                "metrics": self.metrics,
                "scalers": {name: s.state_dict() for name, s in self.scalers.items()},
                "rng": capture_rng(tensors), "world_size": self.world_size,
                "loss_window": {"sums": dict(self.window[0]), "count": self.window[1]},
            })
        return tensors, meta

    def restore(self, loaded: Checkpoint, position: Callable[[dict[str, Any]], int],
                rng: Callable[[Callable[[], None]], None]) -> None:
        """Load everything :meth:`capture` saved into the model, its step and this state.

        ``position(meta)``: ``step_in_epoch`` for this run's number of processes;
        ``rng(restore)``: restores the RNG states (under torchrun rank 0 alone calls it).
        """
        path, tensors, meta = loaded.path, loaded.tensors, loaded.meta
        check_model(path, meta, self.model)
        restore_networks(path, tensors, self.model)
        restore_optimizers(path, tensors, meta, self.model)
        restore_parts(path, tensors, meta, self.parts)
        for name, state in meta.get("scalers", {}).items():
            if name in self.scalers and state and self.scalers[name].is_enabled():
                self.scalers[name].load_state_dict(state)
        self.epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.step_in_epoch = position(meta)
        best = meta.get("best")
        if best is not None and self.best is not None and best["metric"] == self.best.metric:
            self.best.value, self.best.step = best.get("value"), best.get("step")
        self.metrics = meta.get("metrics") or {}
        window = meta.get("loss_window") or {}
        self.window = ({k: float(v) for k, v in (window.get("sums") or {}).items()},
                       int(window.get("count") or 0))
        rng(lambda: restore_rng(tensors, meta["rng"]))


__all__ = ["FORMAT_VERSION", "MIGRATIONS", "RENAMED_OPTIONS", "Best", "Checkpoint", "Stateful",
           "TrainState", "load", "read_checkpoint", "read_metadata", "renamed_options"]
