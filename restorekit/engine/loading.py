"""Rebuilding models from checkpoints, and run folders from imported weights.

The options and preprocessing a model is rebuilt with come from one place, the
checkpoint's metadata, for both :func:`load_trained` and resuming
(:meth:`restorekit.engine.job.TrainJob.resume`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from restorekit.api import TrainableModel, field_problem
from restorekit.engine.config import TrainConfig, resolve_device
from restorekit.engine.rundir import RunDir
from restorekit.engine.state import TrainState, load, restore_model, restore_networks
from restorekit.errors import CheckpointError, RestorekitError, UsageError, one_line
from restorekit.pipeline import Pipeline
from restorekit.plugins import Registry


def _options(cls: type[TrainableModel], values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            continue  # an option this version of the model no longer has
        default = fields[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls.Options(**kwargs)


def check_overrides(cls: type[TrainableModel], overrides: dict[str, Any]) -> None:
    """A one-line ``UsageError`` for an override outside its field's declared range."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    for key, value in overrides.items():
        problem = field_problem(fields[key], value) if key in fields else None
        if problem:
            raise UsageError(f"--{key.replace('_', '-')}: {problem}")


def model_from_metadata(path: Path, meta: dict[str, Any], registry: Registry,
                        **overrides: Any) -> TrainableModel:
    """An unbuilt model of the class, options and preprocessing stored in ``meta``.

    ``overrides`` are the user's (checked as options); a stored value that is malformed or
    out of its declared range is a ``CheckpointError`` naming ``path`` and the field.
    """
    name = meta["model"]
    try:
        cls = registry.model(name)
    except RestorekitError as exc:
        raise CheckpointError(f"{path}: checkpoint of model {name!r}, which is not "
                              f"available ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, TrainableModel)):
        raise CheckpointError(f"{path}: model {name!r} is not a trainable model")
    check_overrides(cls, overrides)
    stored = meta.get("options", {})
    for f in dataclasses.fields(cls.Options):
        problem = field_problem(f, stored[f.name]) \
            if f.name in stored and f.name not in overrides else None
        if problem:
            raise CheckpointError(f"{path}: checkpoint metadata field 'options.{f.name}': "
                                  f"{problem}")
    try:
        options = _options(cls, {**stored, **overrides})
    except (TypeError, ValueError, RestorekitError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata field 'options' does not fit "
                              f"model {name!r} ({' '.join(str(exc).split())})") from None
    try:
        pipeline = Pipeline.parse(meta.get("preprocess", ""), registry)
    except RestorekitError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata field 'preprocess': "
                              f"{exc}") from None
    return cls(options, pipeline)


_ALLOCATION = re.compile(r"can't allocate|out of memory|failed to allocate", re.I)
_TRIED = re.compile(r"tried to allocate (\d+ bytes|[\d.]+ ?[KMGT]i?B)", re.I)


def build_model(model: TrainableModel, device: torch.device) -> None:
    """``model.build(device)``, where every model is built; memory that runs out while
    building is one line naming the model's sizes (not the allocator's report)."""
    try:
        model.build(device)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not (isinstance(exc, torch.OutOfMemoryError)
                                                  or _ALLOCATION.search(str(exc))):
            raise
        tried = _TRIED.search(str(exc))
        reason = f"{device.type} could not allocate {tried.group(1)}" if tried else \
            one_line(exc)[:160]
        sizes = _sizes(model.options)
        raise RestorekitError(f"building {type(model).name}"
                              + (f" with {sizes}" if sizes else "")
                              + f" needs more memory than this machine has ({reason}); "
                              f"choose smaller sizes") from None


def _sizes(options: Any) -> str:
    """``name=value`` of the model's own integer options above their defaults (else all of
    them): the sizes that make a network big."""
    if not dataclasses.is_dataclass(options):
        return ""
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    own = [(f.name, getattr(options, f.name), f.default) for f in dataclasses.fields(options)
           if f.name not in shared and type(getattr(options, f.name)) is int]
    grown = [(name, value) for name, value, default in own
             if isinstance(default, int) and value > default]
    return ", ".join(f"{name}={value}" for name, value, *_ in grown or own)


def load_trained(checkpoint: str | Path, registry: Registry,
                 device: str | torch.device = "auto") -> TrainableModel:
    """Rebuild a trained model from a checkpoint file or a run folder, ready to enhance.

    ``checkpoint``: a ``.safetensors`` file, a run folder or its ``checkpoints/`` folder
    (its newest checkpoint; see :meth:`RunDir.find_checkpoint`). ``registry`` (e.g.
    ``restorekit.plugins.get_registry()``) provides the stored model's class and
    preprocessors. The model is built on ``device``, its weights loaded and its networks
    put in eval mode.
    """
    loaded = load(RunDir.find_checkpoint(checkpoint))
    model = model_from_metadata(loaded.path, loaded.meta, registry)
    build_model(model, device if isinstance(device, torch.device) else resolve_device(device))
    restore_model(loaded, model)
    for net in model.networks().values():
        net.eval()
    return model


def import_weights(model: TrainableModel, state_dicts: dict[str, dict[str, torch.Tensor]],
                   run_dir: str | Path, source: str, overwrite: bool = False) -> Path:
    """Write a run folder whose checkpoint holds ``state_dicts`` (network name -> weights).

    Networks without weights keep their fresh initialisation; a missing, extra or
    misshapen tensor is a one-line ``CheckpointError``. The checkpoint has no optimiser
    state: the run is for ``--eval``/``--enhance`` (and as a start for a new run), not
    for ``--resume``. Returns the checkpoint's path.
    """
    from restorekit.engine.checkpoint import first_non_finite, write_checkpoint

    unknown = sorted(set(state_dicts) - set(model.networks()))
    if unknown:
        raise CheckpointError(f"{source}: model {type(model).name!r} has no network "
                              f"{unknown[0]!r} (networks: {', '.join(model.networks())})")
    tensors = {f"net.{net}.{key}": value for net, sd in state_dicts.items()
               for key, value in sd.items()}
    for name, net in model.networks().items():
        if name not in state_dicts:
            tensors.update({f"net.{name}.{k}": v for k, v in net.state_dict().items()})
    restore_networks(Path(source), tensors, model)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{source}: tensor {bad!r} holds inf or NaN values")
    run = RunDir(run_dir)
    run.prepare(overwrite=overwrite)
    try:
        state = TrainState(model)
        state.register_model_parts()
        tensors, meta = state.capture(training=False)
        meta["converted_from"] = source
        path = run.checkpoint_path(RunDir.LAST)
        write_checkpoint(path, tensors, meta)
        run.commit_checkpoint(path, best=False, info={"epoch": 0, "step": 0})
        run.write_config({"model": type(model).name, "options": meta["options"],
                          "preprocess": meta["preprocess"], "data": f"converted from {source}",
                          "restorekit_version": meta["restorekit_version"],
                          "extra": {"data_path": None}})
    finally:
        run.release()
    return path
