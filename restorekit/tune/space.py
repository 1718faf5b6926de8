"""The search space of a study: the model's hyperparameters and the preprocessing pipeline.

Both parts are declared by plugins: a trainable model by
:meth:`~restorekit.api.TrainableModel.search_space`, each preprocessor by its ``search``
field. A ``--space`` file (TOML or JSON) narrows or fixes any of it::

    [model]
    only = ["lr", "upsample"]            # search only these declared parameters
    lr = {low = 1e-4, high = 1e-3, log = true}
    ngf = [16, 24]                       # a list: choose among these values
    niter = 6                            # a single value: fixed (any option)

    [preprocess]
    max_steps = 2                        # pipelines of 0..2 steps (0: no preprocessing)
    candidates = ["autogamma", "clahe", "denoise"]
    # pipeline = "autogamma,denoise"     # or one fixed pipeline
    denoise = {method = ["tv", "bilateral"], strength = {low = 0.5, high = 1.5}}

Parameter names in a study: model hyperparameters by their own names; a pipeline of
``preprocess.steps`` steps, step ``k`` being ``preprocess.k`` with parameters
``preprocess.k.NAME.PARAM``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from restorekit.api import Choice, FloatRange, IntRange, SearchRange, TrainableModel
from restorekit.errors import UsageError
from restorekit.plugins import Registry

MAX_STEPS = 2
"""Longest preprocessing pipeline searched by default."""


@dataclass
class Space:
    """What one study searches and what it keeps fixed."""

    model: dict[str, SearchRange] = field(default_factory=dict)
    """Searched model parameters (option names or the model's derived names)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Option values fixed for every trial (on top of the preset)."""
    pipeline: str | None = None
    """A fixed preprocessing pipeline, or None to search one."""
    max_steps: int = MAX_STEPS
    candidates: dict[str, dict[str, SearchRange]] = field(default_factory=dict)
    """Preprocessors a searched pipeline may use, with the ranges of their parameters."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (stored with the study)."""
        return {"model": {k: _show(v) for k, v in self.model.items()},
                "fixed": self.fixed,
                "preprocess": self.pipeline if self.pipeline is not None else {
                    "max_steps": self.max_steps,
                    "candidates": {n: {k: _show(v) for k, v in p.items()}
                                   for n, p in self.candidates.items()}}}


def _show(where: SearchRange) -> Any:
    if isinstance(where, Choice):
        return list(where.values)
    return {k: v for k, v in dataclasses.asdict(where).items()}


def read_space_file(path: Path) -> dict[str, Any]:
    """The tables of a ``--space`` file (``.toml`` or ``.json``); errors name the file."""
    if not path.is_file():
        raise UsageError(f"--space: {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
    except ValueError as exc:
        raise UsageError(f"--space: {path}: not valid {path.suffix.lstrip('.') or 'TOML'} "
                         f"({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--space: {path}: expected a table with [model] and [preprocess]")
    unknown = sorted(set(data) - {"model", "preprocess"})
    if unknown:
        raise UsageError(f"--space: {path}: unknown table {unknown[0]!r} (expected model, "
                         f"preprocess)")
    return data


def parse_range(value: Any, where: str) -> SearchRange | None:
    """A range from a ``--space`` entry: ``{low, high[, log, step]}`` or a list of values;
    None for a single value (fixed)."""
    if isinstance(value, list):
        if not value:
            raise UsageError(f"{where}: empty list of values")
        return Choice(*value)
    if isinstance(value, dict):
        keys = set(value) - {"low", "high", "log", "step"}
        if keys or not {"low", "high"} <= set(value):
            raise UsageError(f"{where}: a range is {{low = ..., high = ...[, log = true]"
                             f"[, step = ...]}} (got {value})")
        low, high = value["low"], value["high"]
        try:
            if all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (low, high, value.get("step", 1))):
                return IntRange(low, high, int(value.get("step", 1)), bool(value.get("log")))
            if "step" in value:
                raise ValueError("step is for integer ranges")
            return FloatRange(float(low), float(high), bool(value.get("log")))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    return None


def build_space(model_cls: type[TrainableModel], preset: str | None, registry: Registry,
                space_file: Path | None = None) -> Space:
    """The study's space: what the plugins declare, narrowed by ``space_file``."""
    declared = dict(model_cls.search_space(preset))
    for name, where in declared.items():
        if not isinstance(where, SearchRange):
            raise UsageError(f"model {model_cls.name!r}: search_space()[{name!r}] is not a "
                             f"FloatRange, IntRange or Choice")
    registered = sorted(registry.items["preprocessors"].items())
    candidates = {name: dict(p.search) for name, p in registered
                  if name not in registry.conflicts["preprocessors"]}
    space = Space(model=declared, candidates=candidates)
    if space_file is None:
        return space
    data = read_space_file(space_file)
    _narrow_model(space, model_cls, data.get("model", {}), f"--space: {space_file}: [model]")
    _narrow_preprocess(space, registry, data.get("preprocess", {}),
                       f"--space: {space_file}: [preprocess]")
    return space


def _narrow_model(space: Space, model_cls: type[TrainableModel], table: Any,
                  where: str) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table")
    options = {f.name for f in dataclasses.fields(model_cls.Options)}
    table = dict(table)
    only = table.pop("only", None)
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(n, str) for n in only):
            raise UsageError(f"{where}.only: expected a list of parameter names")
        unknown = sorted(set(only) - set(space.model))
        if unknown:
            raise UsageError(f"{where}.only: {unknown[0]!r} is not in the space of "
                             f"{model_cls.name!r} ({', '.join(space.model)})")
        space.model = {k: v for k, v in space.model.items() if k in only}
    for name, value in table.items():
        if name not in options and name not in space.model and \
                name not in model_cls.search_space(None):
            raise UsageError(f"{where}: {name!r} is neither an option nor a searched "
                             f"parameter of {model_cls.name!r}")
        found = parse_range(value, f"{where}.{name}")
        if found is None:
            space.model.pop(name, None)
            space.fixed[name] = value
        else:
            space.model[name] = found


def _narrow_preprocess(space: Space, registry: Registry, table: Any, where: str) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table")
    table = dict(table)
    pipeline = table.pop("pipeline", None)
    if pipeline is not None:
        from restorekit.pipeline import Pipeline

        if not isinstance(pipeline, str):
            raise UsageError(f"{where}.pipeline: expected a pipeline spec string")
        space.pipeline = str(Pipeline.parse("" if pipeline == "none" else pipeline, registry))
    if "max_steps" in table:
        steps = table.pop("max_steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise UsageError(f"{where}.max_steps: expected an integer >= 0")
        space.max_steps = steps
    if "candidates" in table:
        names = table.pop("candidates")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"{where}.candidates: expected a list of preprocessor names")
        unknown = sorted(set(names) - set(space.candidates))
        if unknown:
            raise UsageError(f"{where}.candidates: no preprocessor {unknown[0]!r} (known: "
                             f"{', '.join(sorted(space.candidates))})")
        space.candidates = {n: space.candidates[n] for n in names}
    for name, params in table.items():
        if name not in space.candidates:
            raise UsageError(f"{where}: {name!r} is not a candidate preprocessor")
        if not isinstance(params, dict):
            raise UsageError(f"{where}.{name}: expected a table of parameters")
        declared = registry.preprocessor(name).params
        for param, value in params.items():
            if param not in declared:
                raise UsageError(f"{where}.{name}: preprocessor {name!r} has no parameter "
                                 f"{param!r} ({', '.join(declared) or 'none'})")
            found = parse_range(value, f"{where}.{name}.{param}")
            space.candidates[name][param] = found if found is not None else Choice(value)


# -- sampling ---------------------------------------------------------------------------------
def suggest(trial: Any, name: str, where: SearchRange) -> Any:
    """``trial.suggest_*`` for one range."""
    if isinstance(where, FloatRange):
        return trial.suggest_float(name, where.low, where.high, log=where.log)
    if isinstance(where, IntRange):
        return trial.suggest_int(name, where.low, where.high, step=where.step, log=where.log)
    return trial.suggest_categorical(name, list(where.values))


def _spec_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(f"{value:.4g}")) if math.isfinite(value) else repr(value)
    return str(value)


def sample_pipeline(trial: Any, space: Space) -> str:
    """A pipeline spec: fixed, or ``preprocess.steps`` steps drawn from the candidates."""
    if space.pipeline is not None:
        return space.pipeline
    if space.max_steps <= 0 or not space.candidates:
        return ""
    count = trial.suggest_int("preprocess.steps", 0, space.max_steps)
    steps = []
    for k in range(count):
        name = trial.suggest_categorical(f"preprocess.{k}", sorted(space.candidates))
        values = [f"{param}={_spec_value(suggest(trial, f'preprocess.{k}.{name}.{param}', r))}"
                  for param, r in sorted(space.candidates[name].items())]
        steps.append(":".join([name, *values]))
    return ",".join(steps)


def sample_model(trial: Any, space: Space) -> dict[str, Any]:
    """The model parameters of one trial, drawn from ``space.model``."""
    return {name: suggest(trial, name, where) for name, where in space.model.items()}


def preset_values(model_cls: type[TrainableModel], preset: str | None,
                  fixed: Mapping[str, Any]) -> dict[str, Any]:
    """What every trial starts from: the preset's values with the fixed ones on top."""
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(model_cls.presets.get(preset, {}))
    values.update(fixed)
    return values
