"""Preprocessor pipelines from spec strings such as ``"autogamma,clahe:clip=0.01"``.

Grammar: steps separated by ``,``; a step is ``[plugin:]name[:key=value...]``, e.g.
``clahe:clip=0.01`` or ``nightowl:msr:sigma=3``: the segment after the first is the
preprocessor's name (qualified by the plugin in front) when it holds no ``=``, since every
parameter assignment does. Values are parsed by the type of the parameter's default (bool,
int, float, str) and checked against the preprocessor's declared ``ranges``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from restorekit._version import __version__
from restorekit.api import Preprocessor, check_range, of_plugin
from restorekit.data.cache import ImageCache
from restorekit.errors import PluginError, UsageError
from restorekit.plugins import Registry
from restorekit.types import Image

MEMO_BYTES = 512 * 2**20
"""What :meth:`Pipeline.remember` keeps by default (about 180 images of 400x600)."""

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
        self._key: str | None = None
        self._memo: ImageCache | None = None

    @classmethod
    def parse(cls, spec: str | None, registry: Registry) -> Pipeline:
        """Parse ``spec`` against ``registry``'s preprocessors (``UsageError`` if bad)."""
        if spec is None or not spec.strip():
            return cls()
        steps = [_parse_step(part.strip(), registry) for part in spec.split(",")]
        return cls(steps)

    def remember(self, max_bytes: int = MEMO_BYTES) -> Pipeline:
        """Keep the outputs of up to ``max_bytes`` of distinct inputs (told apart by their
        bytes), so that an image preprocessed again, such as a validation image at every
        evaluation of a training run, is computed once. Only a pipeline with a
        :meth:`cache_key` remembers. Returns the pipeline."""
        self._memo = ImageCache(max_bytes) if self.cache_key() is not None else None
        return self

    def __call__(self, image: Image) -> Image:
        if self._memo is None:
            return self._run(image)
        data = np.ascontiguousarray(image)
        key = (data.shape, data.dtype.str, hashlib.blake2b(data.data, digest_size=16).digest())
        found = self._memo.get(key)
        if found is not None:
            return found[0]
        out = self._run(image)
        self._memo.put(key, out)
        return out

    def _run(self, image: Image) -> Image:
        """``image`` through every step, each result checked (:func:`checked_result`)."""
        for step in self.steps:
            try:
                out = step.preprocessor.apply(image, **step.params)
            except ValueError as exc:
                raise UsageError(f"--preprocess: {step}: {exc}") from None
            image = checked_result(step.preprocessor, out, image)
        return image

    def cache_key(self) -> str | None:
        """What identifies this pipeline's output for a given image, for caches of
        preprocessed images (:class:`restorekit.data.cache.PreprocessedLows`): each step's
        preprocessor (name, plugin, function and a hash of its module's source) with all
        its parameter values, and the versions of restorekit, numpy and scikit-image.
        None when a step is not ``deterministic`` (never cached)."""
        if any(not step.preprocessor.deterministic for step in self.steps):
            return None
        if self._key is None:
            lines = [f"restorekit {__version__}", f"numpy {np.__version__}",
                     f"scikit-image {_version('scikit-image')}"]
            for step in self.steps:
                pre = step.preprocessor
                params = ", ".join(f"{k}={v!r}" for k, v in sorted(step.params.items()))
                lines.append(f"{pre.name} (plugin {pre.plugin!r}, {_code(pre.fn)}): {params}")
            self._key = "\n".join(lines)
        return self._key

    def __getstate__(self) -> dict[str, Any]:
        """A copy (a DataLoader worker's) remembers afresh, within the same budget."""
        state = dict(self.__dict__)
        if self._memo is not None:
            state["_memo"] = ImageCache(self._memo.max_bytes)
        return state

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
    name, *assignments = [part.strip() for part in text.split(":")]
    if not name:
        raise UsageError("--preprocess: empty step in the pipeline spec")
    bare = name
    if assignments and "=" not in assignments[0]:  # plugin:name
        name = f"{name}:{assignments.pop(0)}"
    try:
        pre: Preprocessor = registry.preprocessor(name)
    except PluginError as exc:
        reason = str(exc)
        if bare != name and bare in registry.items["preprocessors"]:  # "clahe:clip"
            reason = f"{bare}: expected key=value, got {name.partition(':')[2]!r}"
        raise UsageError(f"--preprocess: {reason}") from None
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


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _code(fn: Any) -> str:
    """``module.name`` of ``fn`` and a hash of its module's source file (when it has one):
    a preprocessor whose code changed is another preprocessor to a cache."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    try:
        source = inspect.getsourcefile(fn)
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source \
            else "no source"
    except (TypeError, OSError):
        digest = "no source"
    return f"{name} {digest}"


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
