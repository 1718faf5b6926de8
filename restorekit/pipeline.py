"""Preprocessor pipelines from spec strings such as ``"autogamma,clahe:clip=0.01"``.

Grammar: steps separated by ``,``; a step is ``name`` or ``name:key=value[:key=value...]``.
Values are parsed by the type of the parameter's default (bool, int, float, str) and
checked against the preprocessor's declared ``ranges``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from restorekit.api import Preprocessor, check_range, of_plugin
from restorekit.errors import PluginError, UsageError
from restorekit.plugins import Registry
from restorekit.types import Image

RANGE_TOLERANCE = 1e-3
"""How far outside ``[0, 1]`` a preprocessor's result may stray (rounding), then clipped."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Step:
    """One preprocessor with its parameter values."""

    preprocessor: Preprocessor
    params: Mapping[str, Any]

    def __str__(self) -> str:
        changed = [f"{k}={_format(v)}" for k, v in self.params.items()
                   if v != self.preprocessor.params.get(k)]
        return ":".join([self.preprocessor.name, *changed])


class Pipeline:
    """A sequence of preprocessors applied in order; ``str()`` gives its spec back."""

    def __init__(self, steps: tuple[Step, ...] | list[Step] = ()) -> None:
        self.steps = tuple(steps)

    @classmethod
    def parse(cls, spec: str | None, registry: Registry) -> Pipeline:
        """Parse ``spec`` against ``registry``'s preprocessors (``UsageError`` if bad)."""
        if spec is None or not spec.strip():
            return cls()
        steps = [_parse_step(part.strip(), registry) for part in spec.split(",")]
        return cls(steps)

    def __call__(self, image: Image) -> Image:
        """``image`` through every step, each result checked (:func:`checked_result`)."""
        for step in self.steps:
            try:
                out = step.preprocessor.apply(image, **step.params)
            except ValueError as exc:
                raise UsageError(f"--preprocess: {step}: {exc}") from None
            image = checked_result(step.preprocessor, out, image)
        return image

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"


def checked_result(pre: Preprocessor, result: Any, image: Image) -> Image:
    """``result`` of ``pre`` on ``image`` as float32 in ``[0, 1]``; a one-line
    ``PluginError`` naming the preprocessor and its plugin when it is not an image of the
    same shape: a floating-point array (float32; float64 is converted) of finite values in
    ``[0, 1]`` (:data:`RANGE_TOLERANCE` beyond is rounding, clipped)."""
    what = of_plugin(f"preprocessor {pre.name!r}", pre.plugin)
    if not isinstance(result, np.ndarray):
        got = "None" if result is None else f"a {type(result).__name__}"
        raise PluginError(f"{what} returned {got} (expected a float32 array of shape "
                          f"{image.shape})")
    if result.shape != image.shape:
        raise PluginError(f"{what} returned {result.shape} for a {image.shape} image")
    if not np.issubdtype(result.dtype, np.floating):
        raise PluginError(f"{what} returned {result.dtype} values (expected float32 in "
                          f"[0, 1])")
    bad = result.size - int(np.count_nonzero(np.isfinite(result)))
    if bad:
        raise PluginError(f"{what} returned {bad} non-finite value{'s' * (bad != 1)}")
    low, high = float(result.min()), float(result.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise PluginError(f"{what} returned values in [{low:.4g}, {high:.4g}] (expected "
                          f"float32 in [0, 1])")
    return np.clip(result.astype(np.float32, copy=False), 0.0, 1.0)


def _parse_step(text: str, registry: Registry) -> Step:
    name, *assignments = text.split(":")
    name = name.strip()
    if not name:
        raise UsageError("--preprocess: empty step in the pipeline spec")
    try:
        pre: Preprocessor = registry.preprocessor(name)
    except PluginError as exc:
        raise UsageError(f"--preprocess: {exc}") from None
    params = dict(pre.params)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--preprocess: {name}: expected key=value, got {assignment!r}")
        if key not in pre.params:
            known = ", ".join(sorted(pre.params)) or "none"
            raise UsageError(f"--preprocess: {name} has no parameter {key!r} "
                             f"(parameters: {known})")
        params[key] = _convert(name, key, raw.strip(), pre.params[key])
    for key, spec in (pre.ranges or {}).items():
        problem = check_range(params[key], spec) if key in params else None
        if problem:
            raise UsageError(f"--preprocess: {name}:{key}: {problem}")
    return Step(pre, params)


def _convert(name: str, key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if not np.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise UsageError(f"--preprocess: {name}:{key} expects {type(default).__name__}, "
                         f"got {raw!r}") from None
    return raw


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
