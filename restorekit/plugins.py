"""Finding, loading and querying plugins.

Built-in plugins are modules inside restorekit registered through the same hooks
as third-party plugins, which are found through the ``restorekit`` entry-point
group. A plugin that fails to import, declares an incompatible API version,
implements an unknown hook (or a known one with the wrong parameters), registers a
model class that lacks a required method or raises inside a hook is recorded as a
load failure and skipped; ``RESTOREKIT_STRICT_PLUGINS=1`` makes any failure an error.

Every item is addressable by its qualified name ``PLUGIN:NAME`` (``builtin:mae``,
``nightowl:mae``); restorekit's own modules form the plugin ``builtin``. A bare name
registered by two plugins is an error that lists the qualified names to use.

Environment variables:
    RESTOREKIT_DISABLE_PLUGINS  comma-separated entry-point names not to load ("*": all)
                                and single items not to register (``PLUGIN:NAME``)
    RESTOREKIT_STRICT_PLUGINS   "1": plugin failures raise one ``PluginError`` naming
                                every broken plugin
    RESTOREKIT_TRACE_PLUGINS    "1": log every entry-point load and hook call to stderr,
                                and show the traceback of a plugin that fails
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from restorekit import hookspecs
from restorekit._env import strict_plugins, trace_plugins
from restorekit._version import __version__
from restorekit.api import (
    AnyMetric,
    Command,
    Metric,
    Model,
    NoReferenceMetric,
    Preprocessor,
    SearchRange,
    missing_methods,
    print_plugin_traceback,
)
from restorekit.errors import PluginError, forget_warnings, one_line, warn
from restorekit.types import API_VERSION

ENTRY_POINT_GROUP = "restorekit"
BUILTIN = "builtin"
"""The plugin name of restorekit's own items (``builtin:mae``)."""
BUILTIN_MODULES = (
    "restorekit.builtin.preprocessors",
    "restorekit.builtin.metrics",
    "restorekit.builtin.noreference",
    "restorekit.builtin.models",
    # Loaded by name: the plugin layer never imports the command layer above it.
    "restorekit.cli.commands",
)
KINDS = ("preprocessors", "models", "metrics", "commands")
_ITEM_TYPES: dict[str, tuple[type, ...]] = {"preprocessors": (Preprocessor,),
                                            "metrics": (Metric, NoReferenceMetric),
                                            "commands": (Command,)}

@dataclass
class PluginInfo:
    """One plugin as ``restorekit plugins`` shows it."""

    name: str
    source: str  # "built-in" or the distribution that ships it
    version: str
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    error: str | None = None
    conflicts: list[str] = field(default_factory=list)
    """One line per contested name, e.g. ``"models 'x' also registered by 'y'"``."""
    plugin: str = ""
    """The name users qualify its items with (``builtin`` for restorekit's own modules)."""
    warnings: list[str] = field(default_factory=list)
    """Problems that do not stop it loading (it implements no hooks, say)."""
    disabled: list[str] = field(default_factory=list)
    """Its items left out by ``RESTOREKIT_DISABLE_PLUGINS`` (``kind name``)."""

    def __post_init__(self) -> None:
        self.plugin = self.plugin or self.name


@dataclass
class Registry:
    """Every registered item by kind and name, with the plugin that registered it."""

    items: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    """By bare name (a contested name keeps the first plugin's item: see ``conflicts``)."""
    owners: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    conflicts: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    """Bare names registered by more than one plugin: their qualified names."""
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    qualified: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: {} for k in KINDS})
    """Every item by ``PLUGIN:NAME``; a contested item's ``name`` is its qualified name."""

    def get(self, kind: str, name: str) -> Any:
        """The item ``name`` (bare or ``PLUGIN:NAME``) of ``kind``; a clear ``PluginError``
        when unknown, or when a bare name is registered by several plugins."""
        what = kind[:-1]
        if ":" in name:
            try:
                return self.qualified[kind][name]
            except KeyError:
                known = ", ".join(sorted(self.qualified[kind])) or "none"
                raise PluginError(f"unknown {what} {name!r} (known: {known})") from None
        if name in self.conflicts[kind]:
            names = self.conflicts[kind][name]
            who = " and ".join(repr(n.rpartition(":")[0]) for n in names)
            raise PluginError(f"{what} {name!r} is registered by plugins {who}: name one of "
                              f"{', '.join(names)}")
        try:
            return self.items[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.items[kind])) or "none"
            raise PluginError(f"unknown {what} {name!r} (known: {known})") from None

    def preprocessor(self, name: str) -> Preprocessor:
        return self.get("preprocessors", name)

    def metric(self, name: str) -> AnyMetric:
        return self.get("metrics", name)

    def model(self, name: str) -> type[Model]:
        return self.get("models", name)

    def metrics(self, names: str | None = None) -> list[AnyMetric]:
        """Metrics by comma-separated ``names`` (default: every usable one, sorted)."""
        if names is None or not names.strip():
            usable = sorted(n for n in self.items["metrics"] if n not in self.conflicts["metrics"])
            return [self.metric(n) for n in usable]
        return [self.metric(n.strip()) for n in names.split(",") if n.strip()]

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def _disabled() -> tuple[set[str], set[str]]:
    """``RESTOREKIT_DISABLE_PLUGINS``: the plugins (``NAME``) and items (``PLUGIN:NAME``)."""
    raw = os.environ.get("RESTOREKIT_DISABLE_PLUGINS", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    items = {n for n in names if ":" in n}
    return names - items, items


def _where(exc: BaseException, module: str = "") -> str:
    """``file:line`` of the plugin's own code where ``exc`` came from.

    A SyntaxError's own location first; else the innermost frame inside the plugin's
    package (``module``), else the innermost frame outside importlib's machinery.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen")]
    root = _package_folder(module)
    mine = [f for f in frames if root and f.filename.startswith(root)]
    frame = (mine or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else "unknown location"


def _package_folder(module: str) -> str:
    """The folder (or file stem) of the top-level package of ``module``, if findable."""
    top = module.split(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin:
        return ""
    origin = os.path.abspath(spec.origin)
    return os.path.dirname(origin) + os.sep if origin.endswith("__init__.py") else origin


class PluginManager:
    """pluggy's manager plus load-failure isolation and the item registry."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        self._broken: dict[str, None] = {}  # strict mode: every failure, in order
        self.tracing = trace_plugins()
        for module_name in BUILTIN_MODULES:
            module = importlib.import_module(module_name)
            self._register(module, module_name,
                           PluginInfo(module_name, "built-in", __version__, plugin=BUILTIN))
        if load_entry_points:
            self._load_entry_points()

    # -- loading ---------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        disabled, _ = _disabled()
        if BUILTIN in disabled:
            warn(f"RESTOREKIT_DISABLE_PLUGINS: the plugin {BUILTIN!r} cannot be disabled as a "
                 f"whole; name single items instead (e.g. {BUILTIN}:mae)", once=True)
        found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        unknown = sorted(disabled - {ep.name for ep in found} - {"*", BUILTIN})
        if unknown:
            installed = ", ".join(sorted({ep.name for ep in found})) or "none"
            warn(f"RESTOREKIT_DISABLE_PLUGINS names no installed plugin: "
                 f"{', '.join(unknown)} (installed: {installed})", once=True)
        if "*" in disabled:
            return
        for ep in found:
            if ep.name in disabled or ep.name in self.infos:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else "unknown distribution",
                              dist.version if dist else "?")
            self.infos[ep.name] = info
            if self.tracing:
                sys.stderr.write(f"[restorekit] loading entry point {ep.name} = {ep.value} "
                                 f"({info.source} {info.version})\n")
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._fail(info, f"failed to import {ep.value!r}: {one_line(exc)} "
                                 f"(at {_where(exc, ep.value)})", exc)
                continue
            self._register(plugin, ep.name, info)

    def _register(self, plugin: object, name: str, info: PluginInfo) -> None:
        self.infos[name] = info
        if info.source != "built-in" and (info.plugin == BUILTIN or ":" in info.plugin
                                          or "," in info.plugin):
            self._fail(info, f"the plugin name {info.plugin!r} is reserved or contains ':' "
                             f"or ','; rename the entry point")
            return
        wanted = getattr(plugin, "RESTOREKIT_API", API_VERSION)
        if wanted != API_VERSION:
            self._fail(info, f"needs restorekit plugin API {wanted}, this restorekit "
                             f"provides API {API_VERSION}")
            return
        try:
            self._check_hooks(plugin)
            self.pm.register(plugin, name=name)
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            message = str(exc) if isinstance(exc, PluginError) else one_line(exc)
            self._fail(info, message)
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        if not info.hooks:
            self._warn_or_fail(info, f"plugin {name!r} implements no hooks (are its hook "
                                     f"functions decorated with @restorekit.hookimpl?)")
        self._registry = None

    def _check_hooks(self, plugin: object) -> None:
        """Unknown hook names and wrong parameter names, in one clear line each.

        pluggy's own ``check_pending()`` covers a whole manager; this checks one plugin
        before it is registered, so a typo is a load failure of that plugin.
        """
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            spec = getattr(hookspecs, attr, None)
            if spec is None or not attr.startswith("register_"):
                raise PluginError(f"implements unknown hook {attr!r} "
                                  f"(known: {', '.join(_hook_names())})")
            params = list(inspect.signature(getattr(plugin, attr)).parameters)
            expected = list(inspect.signature(spec).parameters)
            extra = [p for p in params if p not in expected]
            if extra:
                raise PluginError(f"hook {attr}: parameter(s) {', '.join(map(repr, extra))} "
                                  f"are not hook arguments (it takes: "
                                  f"{', '.join(expected)})")

    def _fail(self, info: PluginInfo, message: str, exc: BaseException | None = None) -> None:
        info.error = message
        if exc is not None and (self.tracing or strict_plugins()):
            print_plugin_traceback(exc)
        if strict_plugins():
            self._broken[f"plugin {info.name!r} ({info.source}): {message}"] = None
            return
        warn(f"plugin {info.name!r} ({info.source}) skipped: {message}", once=True)

    def _warn_or_fail(self, info: PluginInfo | None, message: str) -> None:
        """A problem that leaves the plugin loaded: a warning, an error in strict mode."""
        if info is not None:
            info.warnings.append(message)
        if strict_plugins():
            self._broken[message] = None
            return
        warn(message, once=True)

    def _raise_strict(self) -> None:
        """Strict mode: one ``PluginError`` naming every failure recorded so far."""
        if not self._broken:
            return
        problems = list(self._broken)
        head = "" if len(problems) == 1 else \
            f"{len(problems)} plugin problems (RESTOREKIT_STRICT_PLUGINS=1): "
        raise PluginError(head + "; ".join(problems))

    # -- registration for tests and embedding -----------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module now (it joins the registry)."""
        existing = self.pm.get_name(plugin)
        if existing is not None:  # e.g. a module already loaded through its entry point
            return existing
        name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
        self._register(plugin, name, PluginInfo(name, "registered at run time", "-"))
        return name

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.infos.pop(name, None)
        self._broken = {m: None for m in self._broken if not m.startswith(f"plugin {name!r} ")}
        self._registry = None

    # -- the registry ------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry(plugins=self.infos)
        for info in self.infos.values():
            info.registered = {k: [] for k in KINDS}
            info.conflicts = []
            info.disabled = []
        impls: dict[str, list[tuple[str, Any]]] = {}
        for kind in KINDS:
            for impl in getattr(self.pm.hook, f"register_{kind}").get_hookimpls():
                impls.setdefault(impl.plugin_name, []).append((kind, impl))
        _, disabled = _disabled()
        # Plugins in registration order (built-ins first); each plugin's items join the
        # registry only if all of its hooks succeed, so a failure never half-registers.
        for name, info in list(self.infos.items()):
            if info.error or name not in impls:
                continue
            staged = self._call_hooks(info, impls[name])
            if staged is None:
                continue
            for kind, item in staged:
                self._add(reg, kind, item, info, disabled)
        used = {f"{i.plugin}:{d.split()[1]}" for i in self.infos.values() for d in i.disabled}
        if disabled - used:
            warn(f"RESTOREKIT_DISABLE_PLUGINS names no registered item: "
                 f"{', '.join(sorted(disabled - used))}", once=True)
        self._raise_strict()
        return reg

    def _call_hooks(self, info: PluginInfo,
                    impls: list[tuple[str, Any]]) -> list[tuple[str, Any]] | None:
        """Call one plugin's hook implementations; its items, or None if one failed."""
        staged: list[tuple[str, Any]] = []
        for kind, impl in impls:
            items: list[Any] = []

            def register(item: Any, _items: list[Any] = items, **_: Any) -> None:
                _items.append(item)

            try:
                impl.function(register=register)
                for item in items:
                    _validate(kind, item)
            except Exception as exc:
                message = str(exc) if isinstance(exc, PluginError) else \
                    f"register_{kind} raised {one_line(exc)} (at {_where(exc)})"
                self._fail(info, message, exc)
                return None
            if self.tracing:
                names = ", ".join(getattr(i, "name", repr(i)) for i in items) or "nothing"
                sys.stderr.write(f"[restorekit] {info.name}: register_{kind} -> {names}\n")
            staged.extend((kind, item) for item in items)
        return staged

    def _add(self, reg: Registry, kind: str, item: Any, info: PluginInfo,
             disabled: set[str]) -> None:
        name = item.name
        qualified = f"{info.plugin}:{name}"
        if qualified in disabled:
            info.disabled.append(f"{kind[:-1]} {name}")
            return
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            item = dataclasses.replace(item, plugin=info.plugin)
        info.registered[kind].append(name)
        reg.qualified[kind][qualified] = item
        owner = reg.owners[kind].get(name)
        if owner is None or owner == info.name:
            reg.items[kind][name] = item
            reg.owners[kind][name] = info.name
            return
        first = f"{reg.plugins[owner].plugin}:{name}"
        names = reg.conflicts[kind].setdefault(name, [first])
        names.append(qualified)
        for q in (first, qualified):  # a contested item is known by its qualified name
            reg.qualified[kind][q] = _renamed(reg.qualified[kind][q], q)
        who = [q.rpartition(":")[0] for q in names]
        for each in reg.plugins.values():
            if name in each.registered[kind] and f"{each.plugin}:{name}" in names:
                others = ", ".join(repr(p) for p in who if p != each.plugin)
                line = f"{kind} {name!r} also registered by {others}"
                each.conflicts[:] = [c for c in each.conflicts
                                     if not c.startswith(f"{kind} {name!r} ")] + [line]
        listed = " and ".join(repr(p) for p in who)
        self._warn_or_fail(None, f"{kind[:-1]} {name!r} is registered by plugins {listed}: "
                                 f"name one of {', '.join(names)}")


def _renamed(item: Any, name: str) -> Any:
    """``item`` under ``name`` (a model class keeps its own)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.replace(item, name=name)
    return item


def _validate(kind: str, item: Any) -> None:
    if kind == "models":
        if not (isinstance(item, type) and issubclass(item, Model)):
            raise PluginError(f"register_models expects a Model subclass, got {item!r}")
        if not item.name:
            raise PluginError(f"model class {item.__name__} has no 'name'")
        missing = missing_methods(item)
        if missing:
            base = "TrainableModel" if item.trainable else "Model"
            raise PluginError(f"model class {item.__name__} ({item.name!r}) does not implement "
                              f"{', '.join(missing)} (required of a {base})")
        return
    expected = _ITEM_TYPES[kind]
    if not isinstance(item, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise PluginError(f"register_{kind} expects {names}, got {item!r}")
    if not item.name or not item.name.replace("_", "").replace("-", "").isalnum():
        raise PluginError(f"invalid {kind[:-1]} name {item.name!r}")
    if kind == "preprocessors":
        problem = _signature_problem(item)
        if problem:
            raise PluginError(f"preprocessor {item.name!r}: {problem}")
        for key in item.ranges:
            if key not in item.params:
                raise PluginError(f"preprocessor {item.name!r}: ranges names {key!r}, which "
                                  f"is not one of its params")
        for key, where in dict(item.search).items():
            if key not in item.params:
                raise PluginError(f"preprocessor {item.name!r}: search names {key!r}, which "
                                  f"is not one of its params")
            if not isinstance(where, SearchRange):
                raise PluginError(f"preprocessor {item.name!r}: search[{key!r}] must be a "
                                  f"FloatRange, IntRange or Choice, got {where!r}")


def _signature_problem(pre: Preprocessor) -> str | None:
    """Why ``pre.params`` does not fit ``pre.fn(image, **params)``, with the function's
    file and line; None when it fits or the signature cannot be read."""
    try:
        signature = inspect.signature(pre.fn)
    except (TypeError, ValueError):
        return None
    rest = list(signature.parameters.values())[1:]  # the first one takes the image
    named = [p.name for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    code = getattr(inspect.unwrap(pre.fn), "__code__", None)
    where = f" (at {code.co_filename}:{code.co_firstlineno})" if code else ""
    fn = f"{getattr(pre.fn, '__name__', 'fn')}()"
    if not any(p.kind is p.VAR_KEYWORD for p in rest):
        unknown = [k for k in pre.params if k not in named]
        if unknown:
            return (f"params names {', '.join(map(repr, unknown))}, which {fn} does not take "
                    f"(it takes: {', '.join(named) or 'only the image'}){where}")
    required = [p.name for p in rest if p.default is p.empty and p.name not in pre.params
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        return (f"{fn} requires {', '.join(map(repr, required))}, which params does not "
                f"declare (give each a default there){where}")
    return None


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (built on first use)."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def get_registry() -> Registry:
    """Every preprocessor, model, metric and command registered by the loaded plugins."""
    return get_plugin_manager().registry


def reset() -> None:
    """Forget the loaded plugins (the next query loads them again) and the warnings shown."""
    global _manager
    _manager = None
    forget_warnings()


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` for the duration of a ``with`` block (tests, notebooks)."""
    pm = get_plugin_manager()
    already = pm.pm.get_name(plugin)
    plugin_name = pm.register(plugin, name)
    try:
        yield plugin_name
    finally:
        if already is None:
            pm.unregister(plugin_name)
