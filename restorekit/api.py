"""The types a plugin registers: preprocessors, metrics, models and commands, and the
``hookimpl`` marker of its hook functions.

Images everywhere in restorekit's public API are ``numpy`` arrays of shape
``(H, W, 3)``, dtype ``float32``, RGB, values in ``[0, 1]`` (see ``restorekit.data``);
``Image`` is an alias of ``numpy.ndarray``. Networks see ``torch`` tensors
``(N, 3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pluggy

from restorekit._env import trace_plugins
from restorekit.errors import PluginError, RestorekitError, UsageError, brief, one_line
from restorekit.hookspecs import hookimpl
from restorekit.types import API_VERSION, Image

if TYPE_CHECKING:
    import torch

# ``Image`` (numpy's ndarray) stays out of ``__all__``: pydoc would print ndarray's whole
# manual in ``help(restorekit.api)``.
__all__ = ["API_VERSION", "AnyMetric", "Choice", "Command", "FloatRange", "IntRange", "Metric",
           "Model", "NoOptions", "NoReferenceMetric", "Preprocessor", "SearchRange",
           "StepContext", "TrainableModel", "call_plugin", "check_range", "hookimpl",
           "validate_options"]

BOUNDS = ("[]", "[)", "(]", "()")
"""How a range's ends count: ``[`` / ``]`` closed (the end is allowed), ``(`` / ``)`` open."""


INT64 = (-(2**63), 2**63 - 1)
"""The integers every numeric option must fit (torch and numpy index with int64)."""

MAX_PROCESSES = 256
"""The most processes a run starts on one machine (``--num-workers``, ``--nproc-per-node``)."""


def range_text(spec: Any) -> str:
    """``spec`` as the user reads it: ``[1, 64]``, ``(0.0, inf]``..."""
    lo, hi, bounds = (*spec, "[]") if len(spec) == 2 else spec
    return (f"{bounds[0]}{'-inf' if lo is None else lo}, "
            f"{'inf' if hi is None else hi}{bounds[1]}")


def check_range(value: Any, spec: Any) -> str | None:
    """Why ``value`` is outside the declared range ``spec``, or None when it is inside.

    ``spec`` is ``(lo, hi)`` or ``(lo, hi, bounds)``: numbers, ``None`` for no limit on that
    side, ``bounds`` one of :data:`BOUNDS` (default ``"[]"``, both ends allowed). A NaN
    or infinite value is always outside, and so is an integer beyond 64 bits (:data:`INT64`),
    whatever the range says.
    """
    lo, hi, bounds = (*spec, "[]") if len(spec) == 2 else spec
    if bounds not in BOUNDS:
        raise ValueError(f"range {spec!r}: bounds must be one of {', '.join(BOUNDS)}")
    shown = range_text(spec)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expects a number in {shown}, got {brief(value)}"
    if not math.isfinite(value):
        return f"{value} is not a finite number (allowed: {shown})"
    below = lo is not None and (value < lo or (value == lo and bounds[0] == "("))
    above = hi is not None and (value > hi or (value == hi and bounds[1] == ")"))
    if below or above:
        return f"{value} is out of range {shown}"
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return f"{value} does not fit a 64-bit integer (allowed: {shown})"
    return None


_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}
_WANTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def type_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is not of field ``f``'s declared type (bool, int, float or str; an int
    is a float, a bool is not an int, ``8.0`` is not an int); None for other types."""
    kind = _TYPES.get(f.type, f.type) if isinstance(f.type, str) else f.type
    if kind not in _WANTED:
        return None
    if kind is bool:
        fits = isinstance(value, bool)
    elif kind is str:
        fits = isinstance(value, str)
    else:
        fits = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float
                                                           else int)
    return None if fits else f"expected {_WANTED[kind]}, got {brief(value)}"


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` does not fit field ``f``: its type, ``"choices"`` or ``"range"``."""
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        allowed = ", ".join(str(c) for c in f.metadata["choices"])
        return f"expected one of {allowed}, got {brief(value)}"
    problem = type_problem(f, value)
    if problem is None and "range" in f.metadata:
        problem = check_range(value, f.metadata["range"])
    return problem


def validate_options(options: Any, only: Any = None) -> None:
    """A one-line ``UsageError`` (``--field-name: ...``) for the first field of the options
    dataclass ``options`` whose value is outside its declared ``range`` or ``choices``.

    ``only`` (names) limits the check to those fields.
    """
    if not dataclasses.is_dataclass(options):
        return
    for f in dataclasses.fields(options):
        if only is not None and f.name not in only:
            continue
        problem = field_problem(f, getattr(options, f.name))
        if problem:
            raise UsageError(f"--{f.name.replace('_', '-')}: {problem}")


_MACHINERY = tuple(os.path.dirname(os.path.abspath(path)) + os.sep
                   for path in (__file__, pluggy.__file__, importlib.__file__))
"""Folders of restorekit, pluggy and importlib: the frames a plugin author skips."""


def print_plugin_traceback(exc: BaseException) -> None:
    """``exc``'s traceback on stderr, starting at the first frame outside restorekit,
    pluggy and importlib (the plugin's own code), or whole when it never leaves them."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_MACHINERY)
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)


def call_plugin(what: str, plugin: str, fn: Callable[..., Any], *args: Any,
                **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an unexpected exception becomes one line naming the plugin.

    ``ValueError`` (a bad value, the plugin's message for the user) and restorekit's own
    errors pass through. Anything else is a bug in the plugin: a ``PluginError`` naming
    ``what`` and ``plugin``, with the traceback on stderr under ``RESTOREKIT_TRACE_PLUGINS=1``.
    """
    try:
        return fn(*args, **kwargs)
    except (ValueError, RestorekitError):
        raise
    except Exception as exc:
        if trace_plugins():
            print_plugin_traceback(exc)
        raise PluginError(f"{of_plugin(what, plugin)} raised {one_line(exc)} "
                          f"(RESTOREKIT_TRACE_PLUGINS=1 shows the traceback)") from exc


def of_plugin(what: str, plugin: str) -> str:
    """``"metric 'x' of plugin 'y'"``: an item and the plugin that registered it, as error
    lines name them."""
    who = f"plugin {plugin!r}" if plugin else "a plugin registered at run time"
    return f"{what} of {who}"


def metric_value(metric: AnyMetric, value: Any) -> float:
    """``value``, what ``metric.fn`` returned, as the float a metric must return; else a
    one-line ``PluginError`` naming the metric and its plugin.

    A Python or numpy number, or a 0-d array, is converted; an array, a string, None or
    NaN is refused, and so is an infinity, except in the metric's better direction (the
    PSNR of identical images is ``inf``, a perfect score).
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a numpy scalar, a 0-d array or tensor
    problem = None
    if value is None:
        problem = "None"
    elif getattr(value, "ndim", None):
        problem = f"an array of shape {tuple(value.shape)}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        problem = f"{brief(value)}, a {type(value).__name__}"
    elif math.isnan(value):
        problem = "NaN"
    elif math.isinf(value) and (value > 0) is not metric.higher_is_better:
        problem = f"{value}"
    if problem:
        raise PluginError(f"{of_plugin(f'metric {metric.name!r}', metric.plugin)} returned "
                          f"{problem} (expected a finite float)")
    return float(value)


@dataclass(frozen=True)
class FloatRange:
    """Search floats in ``[low, high]`` (``log``: uniformly in log space)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise ValueError(f"FloatRange({self.low}, {self.high}, log={self.log}): "
                             f"needs low <= high (and low > 0 with log)")


@dataclass(frozen=True)
class IntRange:
    """Search integers in ``[low, high]`` in steps of ``step`` (``log``: in log space)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high or self.step < 1 or (self.log and self.low <= 0):
            raise ValueError(f"IntRange({self.low}, {self.high}, step={self.step}): needs "
                             f"low <= high, step >= 1 (and low > 0 with log)")


@dataclass(frozen=True, init=False)
class Choice:
    """Search one of ``values`` (bool, int, float or str; unordered)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        if not values:
            raise ValueError("Choice() needs at least one value")
        object.__setattr__(self, "values", tuple(values))


SearchRange = FloatRange | IntRange | Choice
"""Where ``restorekit tune`` searches one parameter: a model's hyperparameter
(:meth:`TrainableModel.search_space`) or a preprocessor's (``Preprocessor.search``)."""


@dataclass(frozen=True)
class Preprocessor:
    """An image -> image transform.

    ``fn(image, **params)`` returns a new image. ``params`` holds every parameter
    with its default value; the default's type (float, int, bool, str) is how a
    value from a pipeline spec such as ``"clahe:clip=0.02"`` is parsed. ``ranges`` maps
    numeric parameters to their allowed range, ``(lo, hi)`` or ``(lo, hi, bounds)`` as
    in :func:`check_range`: a spec outside it is refused when it is parsed.
    """

    name: str
    fn: Callable[..., Image]
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    plugin: str = field(default="", compare=False)
    """The plugin that registered it (set by the registry)."""
    ranges: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Allowed range of each numeric parameter (see :func:`check_range`)."""
    search: Mapping[str, SearchRange] = field(default_factory=dict, compare=False)
    """Where ``restorekit tune`` searches each parameter (a ``FloatRange``, ``IntRange`` or
    ``Choice`` by parameter name); parameters not named here keep their default."""
    deterministic: bool = True
    """Whether ``fn`` always returns the same image for the same image and parameters.
    Training on folder data runs a pipeline of deterministic steps once per image and
    keeps its output (in memory, and on disk in a study's ``STUDY/cache``); set False for a
    transform that draws random numbers, so that it runs for every training crop."""

    def apply(self, image: Image, **params: Any) -> Image:
        """``fn(image, **params)``; a crash becomes one line naming the plugin."""
        return call_plugin(f"preprocessor {self.name!r}", self.plugin, self.fn, image,
                           **params)


@dataclass(frozen=True)
class Metric:
    """A full-reference metric ``fn(prediction, target) -> float`` on two images (the
    prediction and its ground truth); see :class:`NoReferenceMetric` for one image."""

    name: str
    fn: Callable[[Image, Image], float]
    higher_is_better: bool
    description: str = ""
    plugin: str = field(default="", compare=False)
    """The plugin that registered it (set by the registry)."""
    min_size: int = 1
    """The smallest image side the metric is defined for (SSIM's window: 7)."""

    def score(self, prediction: Image, target: Image) -> float:
        """``fn(prediction, target)`` as a float (:func:`metric_value`); a crash or another
        result becomes one line naming the plugin."""
        return metric_value(self, call_plugin(f"metric {self.name!r}", self.plugin, self.fn,
                                              prediction, target))


@dataclass(frozen=True)
class NoReferenceMetric:
    """A no-reference metric ``fn(prediction, source=None) -> float`` on one image.

    It scores an image that has no ground truth (a real low-light photo, an enhanced
    output). ``source`` is the input the prediction was made from, when there is one (the
    low-light image): a metric that compares the output with its input, such as the
    lightness-order error, sets ``needs_source=True`` and is scored only where the input
    is known. Registered through ``register_metrics`` like :class:`Metric`.
    """

    name: str
    fn: Callable[..., float]
    higher_is_better: bool | None
    """None for a statistic with no better direction (mean brightness)."""
    description: str = ""
    plugin: str = field(default="", compare=False)
    """The plugin that registered it (set by the registry)."""
    min_size: int = 1
    """The smallest image side the metric is defined for."""
    needs_source: bool = False
    """True when ``fn`` needs ``source`` (the input image) and is undefined without it."""

    def score(self, prediction: Image, source: Image | None = None) -> float:
        """``fn(prediction, source=source)`` as a float (:func:`metric_value`); a crash or
        another result becomes one line naming the plugin. A metric that does not need the
        input is called as ``fn(prediction)``."""
        args = {"source": source} if self.needs_source else {}
        return metric_value(self, call_plugin(f"metric {self.name!r}", self.plugin, self.fn,
                                              prediction, **args))


AnyMetric = Metric | NoReferenceMetric
"""A full-reference or a no-reference metric (what ``register_metrics`` takes)."""


@dataclass(frozen=True)
class Command:
    """A ``restorekit`` verb: ``restorekit NAME ...``.

    ``configure(parser)`` adds the verb's arguments to its ``argparse`` parser;
    ``run(args, registry)`` does the work with the parsed arguments and the plugin
    registry, and returns the exit status (``None`` means 0). Report bad input by raising
    ``restorekit.errors.UsageError`` (one line, exit 2) or another ``RestorekitError``.
    ``add_help=False`` leaves ``-h/--help`` to ``configure`` (for verbs that print their
    own help).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], int | None]
    add_help: bool = True
    plugin: str = field(default="", compare=False)
    """The plugin that registered it (set by the registry)."""


@dataclass
class NoOptions:
    """Options of a model that has none."""


class Model:
    """An enhancement model. Subclass it and register the class.

    Class attributes describe the model; ``Options`` is a dataclass whose fields
    become ``--field-name`` command-line options of ``restorekit run NAME``; a field's
    ``metadata`` may declare ``"range": (lo, hi[, bounds])`` (see :func:`check_range`) or
    ``"choices": (...)``, checked by :meth:`make_options`. ``presets`` maps a preset name
    to field overrides; ``default_preset`` is used when the user names none.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    default_preset: ClassVar[str | None] = None
    embedded_preset: ClassVar[str | None] = None
    """Preset used when training on the embedded default set (no ``--data``)."""
    default_preprocess: ClassVar[str] = ""
    """Pipeline spec used when the user gives no ``--preprocess``."""

    def __init__(self, options: Any, preprocess: Any) -> None:
        self.options = options
        self.preprocess = preprocess

    def enhance(self, image: Image) -> Image:
        """Enhance one image (any size) and return an image of the same size."""
        raise NotImplementedError

    def min_image_size(self) -> int:
        """The smallest image side (pixels) :meth:`enhance` accepts (1 unless overridden)."""
        return 1

    def check_image(self, height: int, width: int) -> None:
        """A ``ValueError`` when an image of this size is too small for :meth:`enhance`."""
        side = self.min_image_size()
        if height < side or width < side:
            raise ValueError(f"image is {height}x{width} (HxW), smaller than the "
                             f"{side}x{side} model {self.name!r} needs")

    @classmethod
    def make_options(cls, preset: str | None = None, **overrides: Any) -> Any:
        """Build ``Options`` from a preset (or the default one) and overrides."""
        preset = preset or cls.default_preset
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                known = ", ".join(sorted(cls.presets)) or "none"
                raise UsageError(f"--preset: model {cls.name!r} has no preset {preset!r} "
                                 f"(known: {known})")
            values.update(cls.presets[preset])
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"model {cls.name!r} has no option(s): {', '.join(unknown)}")
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        for key, value in overrides.items():  # the user's values first: name what they typed
            problem = field_problem(fields[key], value)
            if problem:
                raise UsageError(f"--{key.replace('_', '-')}: {problem}")
        options = cls.Options(**values)
        validate_options(options)
        return options


class StepContext(Protocol):
    """What the training engine hands a model's ``train_step``."""

    device: torch.device
    epoch: int
    step: int

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for the forward pass (a no-op under --precision fp32)."""
        ...

    def backward_step(self, loss: torch.Tensor, optimizer: str) -> None:
        """``loss.backward()``, then step the named optimizer (loss scaling under fp16)."""
        ...


class TrainableModel(Model):
    """A model the training engine (``restorekit.engine``) can train.

    The engine owns the loop, devices, checkpoints, evaluation and reports; the
    model owns its networks, optimisers and the loss of one step. ``Options`` must
    subclass ``restorekit.engine.TrainConfig``.
    """

    trainable: ClassVar[bool] = True

    def build(self, device: torch.device) -> None:
        """Create networks and optimisers on ``device``."""
        raise NotImplementedError

    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks whose weights a checkpoint holds, by name."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers whose state a checkpoint holds, by name."""
        raise NotImplementedError

    def stateful(self) -> dict[str, Any]:
        """Other objects a checkpoint holds, by name (built by :meth:`build`): anything with
        ``state_dict()`` and ``load_state_dict()``, e.g. a learning-rate scheduler or an EMA
        of the weights. Saved, resumed and loaded with the weights; {} by default."""
        return {}

    def use_raw_weights(self) -> bool:
        """Evaluate and enhance with the trained weights themselves instead of an average
        of them (``run --raw-weights``); False when the model keeps no average."""
        return False

    def num_epochs(self) -> int:
        """Total number of training epochs."""
        return int(self.options.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (0-based), e.g. to set learning rates."""

    @classmethod
    def search_space(cls, preset: str | None = None) -> dict[str, SearchRange]:
        """The hyperparameters ``restorekit tune`` searches, for a study based on ``preset``.

        Keys are ``Options`` fields, or derived names that :meth:`options_from_search`
        turns into options; {} (the default) means nothing to tune but the preprocessing.
        """
        return {}

    @classmethod
    def options_from_search(cls, base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """A trial's option values: ``base`` (the preset and fixed values) with the sampled
        ``params``. Override it to map derived parameters (a ratio, say) onto options."""
        return {**base, **params}

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns the detached loss terms by name."""
        raise NotImplementedError

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        """Enhance a batch ``(N, 3, H, W)`` in [0, 1] (already preprocessed), any H, W."""
        raise NotImplementedError

    def enhance(self, image: Image, tile: int = 0) -> Image:
        """Preprocess, run ``enhance_tensor`` without gradients, return an image.

        ``tile > 0`` runs the network over overlapping tiles of that size (memory bounded
        by the tile, see :func:`restorekit.data.tiling.enhance_tiled`).
        """
        import torch

        from restorekit.data import to_image, to_tensor
        from restorekit.data.tiling import enhance_tiled

        self.check_image(*image.shape[:2])
        net = next(iter(self.networks().values()))
        device = next(net.parameters()).device
        low = to_tensor(self.preprocess(image)).unsqueeze(0).to(device)
        with torch.no_grad():
            out = enhance_tiled(self.enhance_tensor, low, tile) if tile else \
                self.enhance_tensor(low)
        return to_image(out[0])


REQUIRED_METHODS: dict[type, tuple[str, ...]] = {
    Model: ("enhance",),
    TrainableModel: ("build", "networks", "optimizers", "train_step", "enhance_tensor"),
}
"""What a registered model class must implement, checked when its plugin loads."""


def missing_methods(cls: type[Model]) -> list[str]:
    """The methods of ``REQUIRED_METHODS`` that ``cls`` leaves as the base's stubs."""
    base = TrainableModel if issubclass(cls, TrainableModel) else Model
    return [name for name in REQUIRED_METHODS[base]
            if getattr(cls, name) is getattr(base, name)]
