"""Helpers for testing plugins, shipped with restorekit (as pytest ships ``pytester``).

``isolated(...)`` gives a plugin registry that holds the built-ins and exactly the plugins
you pass, never the installed entry points, so a test cannot be broken by another plugin
that happens to be installed (or by the installed copy of the plugin under test)::

    import lumen_plugin
    from restorekit import testing

    @pytest.fixture
    def registry():
        with testing.isolated(lumen=lumen_plugin) as registry:
            yield registry

Inside the ``with`` block ``restorekit.cli.main([...])`` and
``restorekit.plugins.get_registry()`` use the same isolated registry.

``check_plugin(module)`` runs every item a plugin registers through restorekit's own code
paths (a preprocessor through a ``Pipeline``, a metric through ``evaluate.score``, a model
built, trained two steps by the engine's step on :func:`tiny_pairs` and enhancing an image)
and raises one :class:`PluginCheckError` listing every problem, naming the items::

    def test_the_plugin_keeps_restorekits_contracts() -> None:
        testing.check_plugin(lumen_plugin, "lumen")

:func:`step_context` is the engine's step context (what ``train_step`` receives) for a built
model, on the CPU; :func:`tiny_pairs` a few small synthetic pairs and :func:`tiny_batch` a
batch of training crops of them, for a model's own unit tests.

``HostReads()`` counts where code reads tensor data back to the host (what makes the host
wait for a GPU), e.g. to check that a training step never does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from restorekit import errors, plugins
from restorekit.api import AnyMetric, Command, Image, Model, Preprocessor, TrainableModel
from restorekit.data import PairSet, TrainCrops
from restorekit.engine.step import StepContextImpl


@contextmanager
def isolated(*modules: object, **named: object) -> Iterator[plugins.Registry]:
    """A registry of the built-ins plus ``modules`` (by ``__name__``) and ``named`` plugins.

    No entry point is loaded. The previous plugin manager (and the record of warnings
    already shown) comes back when the block ends.
    """
    saved_manager, saved_warned = plugins._manager, set(errors._warned)
    errors.forget_warnings()
    manager = plugins.PluginManager(load_entry_points=False)
    plugins._manager = manager
    try:
        for module in modules:
            manager.register(module)
        for name, plugin in named.items():
            manager.register(plugin, name=name)
        yield manager.registry
    finally:
        plugins._manager = saved_manager
        errors.forget_warnings()
        errors._warned.update(saved_warned)


# -- a tiny data set and the step context -------------------------------------------------------
class TinyPairs(PairSet):
    """``count`` synthetic ``size`` x ``size`` pairs: ``high`` a smooth colour image, ``low``
    a quarter as bright with a little noise (float32, in [0, 1]; the same for a seed)."""

    def __init__(self, count: int = 4, size: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        self.names = [f"tiny{i}" for i in range(count)]
        self.pairs: list[tuple[Image, Image]] = []
        for _ in range(count):
            a, b, c = rng.uniform(0.2, 0.8, 3), rng.uniform(-0.2, 0.2, 3), rng.uniform(
                -0.2, 0.2, 3)
            high = np.clip(a + b * x[..., None] + c * y[..., None]
                           + rng.normal(0, 0.02, (size, size, 3)), 0, 1).astype(np.float32)
            low = np.clip(high * 0.25 + rng.normal(0, 0.01, high.shape), 0, 1)
            self.pairs.append((low.astype(np.float32), high))

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        low, high = self.pairs[i]
        return low.copy(), high.copy()

    def describe(self) -> str:
        size = self.pairs[0][1].shape[0] if self.pairs else 0
        return f"tiny synthetic set: {len(self)} pairs of {size}x{size}"


def tiny_pairs(count: int = 4, size: int = 32, seed: int = 0) -> TinyPairs:
    """A :class:`~restorekit.data.PairSet` of ``count`` small synthetic pairs."""
    return TinyPairs(count, size, seed)


def tiny_batch(batch: int = 2, size: int = 32, seed: int = 0,
               preprocess: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``: a batch ``(batch, 3, size, size)`` of training crops of
    :func:`tiny_pairs`, made by the engine's ``TrainCrops`` (``preprocess``: a pipeline)."""
    crops = TrainCrops(tiny_pairs(batch, size, seed), size, seed=seed, preprocess=preprocess)
    items = [crops[i] for i in range(batch)]
    return (torch.stack([item["low"] for item in items]),
            torch.stack([item["high"] for item in items]))


def step_context(model: TrainableModel, precision: str = "fp32",
                 device: str = "cpu") -> StepContextImpl:
    """The step context the engine hands ``model.train_step`` (its optimisers run as the
    model's options say), for a model already built on ``device``.

    It counts what the step used: ``autocasts`` (``ctx.autocast()`` blocks entered) and
    ``updates`` (optimiser steps through ``ctx.backward_step``, reset it to 0 per step).
    """
    from restorekit.engine.step import make_step_context

    return make_step_context(model, model.options, torch.device(device), precision)


# -- check_plugin ------------------------------------------------------------------------------
class PluginCheckError(AssertionError):
    """What :func:`check_plugin` found: one line per problem, each naming its item."""

    def __init__(self, plugin: str, problems: list[str]) -> None:
        self.plugin, self.problems = plugin, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"plugin {plugin!r}: {len(problems)} problem(s):\n{lines}")


def _image(height: int, width: int, seed: int) -> Image:
    """A smooth dark colour image with some texture (float32, in [0, 1])."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 0.15 + 0.1 * np.sin(x[..., None] / 3.0 + np.arange(3)) * np.cos(y[..., None] / 4.0)
    return np.clip(base + rng.normal(0, 0.02, (height, width, 3)), 0, 1).astype(np.float32)


def image_problem(out: Any, shape: tuple[int, ...]) -> str | None:
    """Why ``out`` is not an image of ``shape`` (float32 ndarray, finite, in [0, 1])."""
    if not isinstance(out, np.ndarray):
        return f"returned {type(out).__name__}, not a numpy array"
    if out.shape != shape:
        return f"returned {out.shape} for a {shape} image"
    if out.dtype != np.float32:
        return f"returned dtype {out.dtype}, not float32"
    if not np.all(np.isfinite(out)):
        return f"returned {int(np.sum(~np.isfinite(out)))} non-finite value(s) (NaN or inf)"
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        return f"returned values in [{lo:.4g}, {hi:.4g}], outside [0, 1]"
    return None


def _failed(exc: BaseException) -> str:
    """``raised Type: message`` of the plugin's own exception (not restorekit's wrapper)."""
    if isinstance(exc, errors.PluginError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"raised {errors.one_line(exc)}"


def _check_preprocessor(pre: Preprocessor, problems: list[str]) -> None:
    from restorekit.pipeline import Pipeline, Step

    what = f"preprocessor {pre.name!r}"
    image = _image(24, 32, 1)
    given = image.copy()
    try:
        out = pre.apply(given, **pre.params)
    except Exception as exc:
        problems.append(f"{what} with its defaults {dict(pre.params)}: {_failed(exc)}")
        return
    problem = image_problem(out, image.shape)
    if problem:
        problems.append(f"{what} {problem}")
        return
    if not np.array_equal(given, image):
        problems.append(f"{what} changed its input image in place (return a new image)")
    try:  # the public path, with whatever checks it makes
        Pipeline([Step(pre, dict(pre.params))])(image)
    except Exception as exc:
        problems.append(f"{what} in a Pipeline: {_failed(exc)}")


def _number_problem(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return f"returned {type(value).__name__} {errors.brief(value)}, not a number"
    if not math.isfinite(float(value)):
        return f"returned {float(value)}, not a finite number"
    return None


def _check_metric(metric: AnyMetric, problems: list[str]) -> None:
    from restorekit.evaluate import is_full_reference, score

    what = f"metric {metric.name!r}"
    side = max(32, metric.min_size)
    target = _image(side, side + 8, 2) * 3.0
    prediction = np.clip(target + _image(side, side + 8, 3) - 0.15, 0, 1).astype(np.float32)
    source = _image(side, side + 8, 4)
    full = is_full_reference(metric)
    try:
        if full:
            raw = metric.fn(prediction, target)
        else:
            raw = metric.fn(prediction, **({"source": source} if metric.needs_source else {}))
    except Exception as exc:
        problems.append(f"{what}: {_failed(exc)}")
        return
    problem = _number_problem(raw)
    if problem:
        problems.append(f"{what} {problem}")
        return
    try:  # the public path, with whatever checks it makes
        value = score(prediction, target if full else None, [metric], what=what,
                      source=source)[metric.name]
    except Exception as exc:
        problems.append(f"{what} through evaluate.score: {_failed(exc)}")
        return
    if not isinstance(value, float) or not math.isfinite(value):
        problems.append(f"{what} scored {errors.brief(value)}, not a finite float")


def _check_command(command: Command, problems: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"restorekit {command.name}",
                                     add_help=command.add_help)
    try:
        command.configure(parser)
    except Exception as exc:
        problems.append(f"command {command.name!r}: configure(parser) {_failed(exc)}")


def _smallest_options(model_cls: type[Model], overrides: Mapping[str, Any]) -> Any:
    """The options of the embedded-set preset (the model's small one), else the defaults,
    on the CPU, with small training crops and batches."""
    preset = model_cls.embedded_preset or model_cls.default_preset
    names = {f.name for f in dataclasses.fields(model_cls.Options)}
    small = {"device": "cpu", "batch_size": 2, "num_workers": 0, "precision": "fp32",
             "cuda_graph": False} if model_cls.trainable else {}
    small = {k: v for k, v in small.items() if k in names}
    if "crop_size" in names and "crop_size" not in overrides:
        side = model_cls(model_cls.make_options(preset, **small, **overrides),
                         None).min_image_size()
        small["crop_size"] = max(32, side)
    return model_cls.make_options(preset, **{**small, **overrides})


def _check_model(model_cls: type[Model], overrides: Mapping[str, Any], steps: int,
                 registry: plugins.Registry, problems: list[str]) -> None:
    from restorekit.pipeline import Pipeline

    what = f"model {model_cls.name!r}"
    try:
        options = _smallest_options(model_cls, overrides)
        model = model_cls(options, Pipeline.parse(model_cls.default_preprocess, registry))
    except Exception as exc:
        problems.append(f"{what}: making its options {_failed(exc)}")
        return
    if model_cls.trainable and not _train_steps(model, steps, what, problems):
        return
    side = max(model.min_image_size(), 24)
    image = _image(side, side + 8, 5)
    try:
        out = model.enhance(image)
    except Exception as exc:
        problems.append(f"{what}: enhance {_failed(exc)}")
        return
    problem = image_problem(out, image.shape)
    if problem:
        problems.append(f"{what}: enhance {problem}")


def _train_steps(model: Any, steps: int, what: str, problems: list[str]) -> bool:
    """Build ``model`` and run ``steps`` engine steps on :func:`tiny_pairs`; False if it
    could not be built or trained."""
    from restorekit.engine.loading import build_model
    from restorekit.engine.step import step_function

    torch.manual_seed(0)
    try:
        build_model(model, torch.device("cpu"))
        nets = model.networks()
        before = {f"{n}.{k}": v.detach().clone() for n, net in nets.items()
                  for k, v in net.state_dict().items()}
        ctx = step_context(model)
        step = step_function(model, ctx)
        crop = model.options.crop_size
        low, high = tiny_batch(model.options.batch_size, crop, preprocess=model.preprocess)
        for net in nets.values():
            net.train()
        for i in range(steps):
            ctx.step, ctx.updates = i, 0
            losses = step(low, high)
            bad = {k: v for k, v in dict(losses).items()
                   if not isinstance(v, torch.Tensor) or v.numel() != 1
                   or not torch.isfinite(v).all()}
            if not isinstance(losses, Mapping) or not losses or bad:
                problems.append(f"{what}: train_step returned {errors.brief(losses)}; expected "
                                f"finite scalar tensors by name")
                return False
    except Exception as exc:
        problems.append(f"{what}: training {_failed(exc)}")
        return False
    if not ctx.autocasts:
        problems.append(f"{what}: train_step never enters ctx.autocast(), so --precision "
                        f"bf16/fp16 would not apply")
    if not ctx.updates:
        problems.append(f"{what}: train_step steps no optimiser through ctx.backward_step(), "
                        f"so fp16 loss scaling and gradient averaging would not apply")
    after = {f"{n}.{k}": v for n, net in nets.items() for k, v in net.state_dict().items()}
    if not any(not torch.equal(before[k], after[k]) for k in before if k in after):
        problems.append(f"{what}: {steps} training step(s) changed no weight of its "
                        f"networks()")
    for net in nets.values():
        net.eval()
    return True


def check_plugin(plugin: object, name: str | None = None, *,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 train_steps: int = 2) -> None:
    """Register ``plugin`` (a module or a plugin object) in an isolated registry (see
    :func:`isolated`) and run every item it registers through restorekit's code paths.

    Each preprocessor runs with its default parameters on a small image, directly and in a
    :class:`~restorekit.pipeline.Pipeline` (a float32 array of the input's shape, finite,
    in [0, 1], the input left unchanged); each metric scores a pair, or an image alone for
    a no-reference one, directly and through :func:`restorekit.evaluate.score` (a finite
    number); each model is made with its embedded-set preset (else its defaults), a
    trainable one built on the CPU and trained ``train_steps`` steps by the engine's step on
    :func:`tiny_pairs` (finite losses, the forward pass under ``ctx.autocast()``, optimisers
    stepped through ``ctx.backward_step``, weights changed), then enhances a small image;
    each command's ``configure`` builds its parser. ``options`` overrides a model's options
    by model name (e.g. smaller networks). Raises one :class:`PluginCheckError` listing
    every problem found; returns None when there is none.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    problems: list[str] = []
    with isolated(**{name: plugin}) as registry:
        name = plugins.get_plugin_manager().pm.get_name(plugin) or name
        info = registry.plugins[name]
        if info.error:
            raise PluginCheckError(name, [f"failed to load: {info.error}"])
        problems += [f"conflict: {line}" for line in info.conflicts]
        items = {kind: [registry.items[kind][n] for n in names if n in registry.items[kind]
                        and registry.owners[kind][n] == name]
                 for kind, names in info.registered.items()}
        if not any(items.values()):
            problems.append("registers nothing (no preprocessor, metric, model or command)")
        for pre in items["preprocessors"]:
            _check_preprocessor(pre, problems)
        for metric in items["metrics"]:
            _check_metric(metric, problems)
        for model_cls in items["models"]:
            _check_model(model_cls, dict((options or {}).get(model_cls.name, {})),
                         train_steps, registry, problems)
        for command in items["commands"]:
            _check_command(command, problems)
    if problems:
        raise PluginCheckError(name, problems)


class HostReads:
    """Records the host reads of tensor data made on this thread inside ``with``.

    A host read is what makes the host wait for a GPU's queued work: ``.item()``,
    ``float()``/``int()``/``bool()``/formatting of a tensor, ``.tolist()``, ``.numpy()``,
    ``torch.equal``, a copy from another device to the CPU, and the ops whose output size
    depends on the data (``nonzero``, ``masked_select``, ``unique``, indexing with a boolean
    mask). They are counted on CPU tensors too, so that a CPU test finds what would stall a
    GPU. Each read is recorded under the label of the last :meth:`mark`, as "what (file:line)",
    the line being the innermost one outside torch::

        with HostReads() as reads:
            for i in range(3):
                reads.mark(i)
                step()
        assert reads.at(1) == []
    """

    _METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__",
                "__format__", "__repr__")
    _OPS = ("_local_scalar_dense", "equal", "is_nonzero", "nonzero", "masked_select",
            "_unique2", "unique_dim", "unique_consecutive")

    def __init__(self) -> None:
        self.label: Any = None
        self.reads: list[tuple[Any, str]] = []
        self._inside = 0  # in a method that reads: its own ops are not counted again
        self._modes: list[Any] = []

    def mark(self, label: Any) -> None:
        """Record the reads that follow under ``label``."""
        self.label = label

    def at(self, label: Any) -> list[str]:
        """The reads recorded under ``label``."""
        return [what for where, what in self.reads if where == label]

    def __len__(self) -> int:
        return len(self.reads)

    def __enter__(self) -> HostReads:
        self._modes = [_FunctionReads(self), _DispatchReads(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(kind, error, tb)
        self._modes = []

    def _record(self, what: str) -> None:
        torch_dir = os.path.dirname(torch.__file__)
        frames = [f for f in traceback.extract_stack()
                  if not f.filename.startswith(torch_dir) and f.filename != __file__]
        where = f" ({os.path.relpath(frames[-1].filename)}:{frames[-1].lineno})" if frames \
            else ""
        self.reads.append((self.label, what + where))


class _FunctionReads(TorchFunctionMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads
        self.methods = {getattr(torch.Tensor, name): name for name in HostReads._METHODS}

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        name = self.methods.get(func)
        if name is None:
            return func(*args, **(kwargs or {}))
        self.reads._record(f"Tensor.{name}")
        self.reads._inside += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.reads._inside -= 1


class _DispatchReads(TorchDispatchMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads
        self.ops = {getattr(torch.ops.aten, name) for name in HostReads._OPS}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.reads._inside and self._reads(func, args, kwargs):
            self.reads._record(str(func))
        return func(*args, **kwargs)

    def _reads(self, func: Any, args: Any, kwargs: Any) -> bool:
        packet = func.overloadpacket
        if packet in self.ops:
            return True
        if packet is torch.ops.aten.index:  # a boolean mask: its size is read
            return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                       for i in args[1])
        if packet is torch.ops.aten._to_copy:  # to the CPU from another device
            to = kwargs.get("device")
            return to is not None and torch.device(to).type == "cpu" \
                and args[0].device.type != "cpu"
        if packet is torch.ops.aten.copy_:
            return args[0].device.type == "cpu" and args[1].device.type != "cpu"
        return False


class Hung(BaseException):
    """Raised by :func:`deadline` (a BaseException: the CLI's last-resort handler, which
    catches ``Exception``, must not turn it into an error line)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail with :class:`Hung` instead of hanging (e.g. blocked opening a FIFO): SIGALRM
    interrupts the main thread after ``seconds``; a no-op where there is no SIGALRM."""
    def expire(signum: int, frame: object) -> None:
        raise Hung(f"still running after {seconds} s (blocked opening a FIFO?)")

    if not hasattr(signal, "SIGALRM"):  # not POSIX: no FIFOs either
        yield
        return
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_venv(path: str | Path, with_pip: bool = True) -> Path:
    """A throw-away virtual environment at ``path`` that also sees this environment's packages.

    Works from a virtual environment too (``--system-site-packages`` would only see the
    base interpreter's packages): a ``.pth`` file adds this interpreter's site folders, so
    restorekit, torch and the rest are importable without reinstalling them. The new
    environment has its own pip; ``pip install -e PLUGIN`` then builds with a current
    setuptools fetched by build isolation (this needs a package index). ``with_pip=False``
    leaves pip out: ``python -m pip`` is then this environment's pip, for offline installs
    with ``--no-build-isolation``. Returns the new environment's python.
    """
    import site
    import subprocess
    import venv

    path = Path(path)
    venv.create(path, with_pip=with_pip)
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs)
    Path(purelib, "_restorekit_parent_env.pth").write_text(line + "\n", encoding="utf-8")
    return python


def _main(argv: list[str]) -> int:
    """``python -m restorekit.testing venv DIR``."""
    if len(argv) != 2 or argv[0] != "venv":
        print("usage: python -m restorekit.testing venv DIR", file=sys.stderr)
        return 2
    python = make_venv(argv[1])
    print(f"created {argv[1]}; next: {python} -m pip install -e . && "
          f"{python} -m restorekit plugins")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
