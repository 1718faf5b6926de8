"""Safe, atomic checkpoints: one ``.safetensors`` file plus a JSON sidecar.

A checkpoint holds every tensor (network weights ``net.<name>.<param>``, optimiser
state ``optim.<name>.state.<i>.<key>``, torch RNG states ``rng.torch``/``rng.cuda.<i>``)
in one safetensors file. Everything else (model name, options, preprocessing spec,
epoch/step counters, optimiser param groups, GradScaler and python/numpy RNG states) is
JSON, stored both as the file's safetensors metadata under the key ``"restorekit"``
(so a lone file describes itself; this copy is the one loading uses) and in a sidecar
``<name>.json`` next to it for people to read.

Checkpoints are only ever read with safetensors and ``json``: pickles (``torch.save``
files) are refused, never unpickled.

Where checkpoints live in a run folder is :class:`restorekit.engine.rundir.RunDir`'s
business; this module only knows the file format.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from restorekit.api import TrainableModel
from restorekit.atomic import atomic_path, atomic_write_text
from restorekit.engine.optimizers import IMPLEMENTATION_FLAGS
from restorekit.errors import CheckpointError, OutputError, os_reason

FORMAT_VERSION = 1
METADATA_KEY = "restorekit"
SUFFIX = ".safetensors"

Tensors = dict[str, torch.Tensor]


def sidecar(path: Path) -> Path:
    """The JSON sidecar of a checkpoint file."""
    return path.with_suffix(".json")


def first_non_finite(tensors: Tensors) -> str | None:
    """The name of the first floating-point tensor holding inf or NaN, or None."""
    for name, value in tensors.items():
        if (value.is_floating_point() or value.is_complex()) and \
                not bool(torch.isfinite(value).all()):
            return name
    return None


def write_checkpoint(path: Path, tensors: Tensors, meta: dict[str, Any]) -> None:
    """Write ``tensors`` + ``meta`` to ``path`` (.safetensors) and its JSON sidecar, atomically.

    Both files get the usual mode (0666 less the umask). A failed write (full disk,
    read-only folder) is a one-line ``OutputError`` naming the file, and leaves the
    previous checkpoint and no temporary file behind. Callers check the tensors are
    finite first (:func:`first_non_finite`).
    """
    text = json.dumps(meta, indent=1)
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(cpu, str(tmp), metadata={METADATA_KEY: text})
        atomic_write_text(sidecar(path), text + "\n")
    except Exception as exc:  # OSError, or safetensors' own error for a full disk
        raise OutputError(f"{path}: cannot write checkpoint ({os_reason(exc)})") from None


def _refusal(path: Path, reason: str) -> CheckpointError:
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        pass
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return CheckpointError(f"{path}: refusing to load a pickle/torch.save file; restorekit "
                               f"only loads .safetensors checkpoints")
    return CheckpointError(f"{path}: not a valid safetensors checkpoint ({reason})")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file (tensors are not read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise _refusal(path, " ".join(str(exc).split())) from None
    if raw is None:
        raise CheckpointError(f"{path}: not a restorekit checkpoint "
                              f"(no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (no model name)")
    check_metadata(path, meta)
    return meta


_INT = (int,)
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a model name"),
    "options": ((dict,), "an object"),
    "preprocess": ((str,), "a pipeline spec"),
    "optimizers": ((dict,), "an object"),
    "epoch": (_INT, "an integer"),
    "step": (_INT, "an integer"),
    "step_in_epoch": (_INT, "an integer"),
    "best_psnr": ((int, float, type(None)), "a number or null"),
    "metrics": ((dict, type(None)), "an object"),
    "scalers": ((dict,), "an object"),
    "rng": ((dict,), "an object"),
    "loss_window": ((dict,), "an object"),
}


def check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """A one-line ``CheckpointError`` naming the file and the first malformed field."""
    for key, (types, what) in _FIELDS.items():
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


def read_checkpoint(path: str | Path) -> tuple[Tensors, dict[str, Any]]:
    """All tensors (on CPU) and the metadata of a checkpoint file."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:
        raise _refusal(path, " ".join(str(exc).split())) from None
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad!r} holds inf or NaN values; the "
                              f"checkpoint is unusable")
    return tensors, meta


# -- model state -----------------------------------------------------------------------------
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


def capture(model: TrainableModel, *, optimizers: bool = True) -> tuple[Tensors, dict[str, Any]]:
    """Tensors and JSON metadata of a model's networks (and optimisers)."""
    tensors: Tensors = {}
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": type(model).name,
        "options": capture_options(model),
        "preprocess": str(model.preprocess),
        "networks": sorted(model.networks()),
        "optimizers": {},
    }
    for name, net in model.networks().items():
        for key, value in net.state_dict().items():
            tensors[f"net.{name}.{key}"] = value
    if optimizers:
        for name, opt in model.optimizers().items():
            meta["optimizers"][name] = _capture_optimizer(name, opt, tensors)
    return tensors, meta


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


def restore_rng(tensors: Tensors, rng: dict[str, Any]) -> None:
    """Restore the RNG states written by :func:`capture_rng`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
