"""``restorekit plugins``: every plugin, what it registers, load failures and conflicts;
``--details [NAME]``: each item's description, parameters, ranges, direction and presets."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from restorekit.api import Command, Metric, SearchRange, call_plugin, range_text
from restorekit.cli._common import json_ready
from restorekit.errors import UsageError
from restorekit.plugins import KINDS, PluginInfo, Registry

DIRECTIONS = {True: "higher", False: "lower", None: "none"}
"""A metric's ``higher_is_better`` as ``--details`` shows it."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hooks", action="store_true",
                        help="show which plugin implements which hook")
    parser.add_argument("--details", nargs="?", const="", default=None, metavar="NAME",
                        help="each item's description, parameters (defaults, ranges, search "
                             "ranges), a metric's direction and kind, a model's presets; "
                             "NAME: one plugin (builtin, pix2pixhd) or one item (clahe, "
                             "builtin:mae)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, registry: Registry) -> int:
    if args.details is not None:
        items = details(registry, args.details)
        if args.json:
            print(json.dumps(json_ready(items), indent=2))
        else:
            for item in items:
                print("\n".join(render(item)))
        return 0
    infos = list(registry.plugins.values())
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    for info in grouped(infos):
        if info.error:
            status = f"FAILED: {info.error}"
        elif info.warnings:
            status = f"WARNING: {'; '.join(info.warnings)}"
        elif info.conflicts:
            status = "ok, with name conflicts"
        else:
            status = "ok"
        print(f"{info.plugin}  {info.version}  ({info.source})  {status}")
        for kind in KINDS:
            if info.registered[kind]:
                print(f"    {kind}: {', '.join(info.registered[kind])}")
        if info.disabled:
            print(f"    disabled: {', '.join(info.disabled)} (RESTOREKIT_DISABLE_PLUGINS)")
        for line in info.conflicts:
            print(f"    conflict: {line}; use the qualified names ({info.plugin}:NAME)")
        if args.hooks and info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    return 0


def grouped(infos: list[PluginInfo]) -> list[PluginInfo]:
    """One entry per plugin as users name it: restorekit's own modules become ``builtin``."""
    merged: dict[str, PluginInfo] = {}
    for info in infos:
        if info.plugin not in merged:
            merged[info.plugin] = dataclasses.replace(
                info, hooks=list(info.hooks), conflicts=list(info.conflicts),
                warnings=list(info.warnings), disabled=list(info.disabled),
                registered={k: list(v) for k, v in info.registered.items()})
            continue
        into = merged[info.plugin]
        into.error = "; ".join(e for e in (into.error, info.error) if e) or None
        into.hooks = sorted(set(into.hooks) | set(info.hooks))
        into.conflicts += info.conflicts
        into.warnings += info.warnings
        into.disabled += info.disabled
        for kind in KINDS:
            into.registered[kind] += info.registered[kind]
    return list(merged.values())


def details(registry: Registry, name: str = "") -> list[dict[str, Any]]:
    """Every item (or those of plugin ``name``, or the items called ``name``) described."""
    everything = [(kind, qualified, item) for kind in KINDS
                  for qualified, item in sorted(registry.qualified[kind].items())]
    plugin_names = sorted({q.rpartition(":")[0] for _, q, _ in everything})
    if name:
        everything = [(kind, q, item) for kind, q, item in everything
                      if name in (q, q.rpartition(":")[0], q.rpartition(":")[2])]
        if not everything:
            raise UsageError(f"--details: no plugin or item named {name!r} (plugins: "
                             f"{', '.join(plugin_names)}; `restorekit plugins` lists the "
                             f"items)")
    return [describe(kind, q, item, q.rpartition(":")[2] in registry.conflicts[kind])
            for kind, q, item in everything]


def describe(kind: str, qualified: str, item: Any, contested: bool = False) -> dict[str, Any]:
    """What a user needs to use one item, as plain data (``--details --json``); ``use`` is
    the name to type: the qualified one when several plugins register the bare name."""
    plugin, _, name = qualified.rpartition(":")
    out: dict[str, Any] = {"kind": kind[:-1], "name": name, "plugin": plugin,
                           "qualified": qualified, "use": qualified if contested else name}
    if kind == "preprocessors":
        out["description"] = item.description
        out["params"] = [{"name": key, "type": type(default).__name__, "default": default,
                          "range": range_text(item.ranges[key]) if key in item.ranges else None,
                          "search": search_data(item.search.get(key))}
                         for key, default in item.params.items()]
    elif kind == "metrics":
        out["description"] = item.description
        out["reference"] = "full-reference" if isinstance(item, Metric) else "no-reference"
        out["direction"] = DIRECTIONS[item.higher_is_better]
        out["min_size"] = item.min_size
        out["needs_source"] = bool(getattr(item, "needs_source", False))
    elif kind == "models":
        out["description"] = item.description
        out["trainable"] = item.trainable
        out["presets"] = {p: dict(v) for p, v in item.presets.items()}
        out["default_preset"] = item.default_preset
        out["default_preprocess"] = item.default_preprocess
        space = call_plugin(f"model {name!r} (search_space)", plugin, item.search_space,
                            item.default_preset) if item.trainable else {}
        out["search"] = {key: search_data(where) for key, where in space.items()}
    else:
        out["description"] = item.help
    return out


def search_data(where: SearchRange | None) -> dict[str, Any] | None:
    """A ``FloatRange``/``IntRange``/``Choice`` as plain data with its type."""
    if where is None:
        return None
    return {"type": type(where).__name__, **dataclasses.asdict(where)}


def search_text(data: dict[str, Any]) -> str:
    """``search`` of :func:`describe` as the text listing shows it."""
    if data["type"] == "Choice":
        return "one of " + ", ".join(str(v) for v in data["values"])
    step = f" step {data['step']}" if data.get("step", 1) != 1 else ""
    return f"{data['low']}..{data['high']}{step}{' (log)' if data['log'] else ''}"


def render(item: dict[str, Any]) -> list[str]:
    """The lines of one item in ``restorekit plugins --details``."""
    head = f"{item['kind']} {item['qualified']}"
    if item["use"] != item["name"]:
        head += "  (its bare name is registered by several plugins: use this one)"
    if item["kind"] == "metric":
        head += f"  ({item['reference']}, better: {item['direction']}"
        head += ", needs the input image)" if item["needs_source"] else ")"
    lines = [head]
    if item["description"]:
        lines.append(f"    {item['description']}")
    for p in item.get("params", []):
        text = f"    {p['name']}: {p['type']} = {p['default']!r}"
        if p["range"]:
            text += f", range {p['range']}"
        if p["search"]:
            text += f", tune searches {search_text(p['search'])}"
        lines.append(text)
    if item["kind"] == "model":
        for preset, values in item["presets"].items():
            mark = " (default)" if preset == item["default_preset"] else ""
            shown = ", ".join(f"{k}={v}" for k, v in values.items()) or "no overrides"
            lines.append(f"    preset {preset}{mark}: {shown}")
        for key, data in item["search"].items():
            lines.append(f"    tune searches {key}: {search_text(data)}")
        lines.append(f"    options: restorekit run {item['name']} --help")
    return lines


COMMAND = Command("plugins", "list plugins and what they register", configure, run)
