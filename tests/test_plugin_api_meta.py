"""A hook cannot be added without documentation in docs/plugins.md and without a test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from restorekit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"


def hook_signatures() -> dict[str, str]:
    """``name -> "name(args) -> ret"`` for every ``@hookspec`` function, from the source."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d) == "hookspec" for d in node.decorator_list):
            ret = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            found[node.name] = f"{node.name}({ast.unparse(node.args)}){ret}"
    return found


def test_hookspecs_are_found() -> None:
    names = set(hook_signatures())
    assert names == {n for n in dir(hookspecs) if n.startswith("register_")}
    assert {"register_preprocessors", "register_models", "register_metrics"} <= names


@pytest.mark.parametrize("name", sorted(hook_signatures()))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    signature = hook_signatures()[name]
    assert f"### `{signature}`" in DOC.read_text(), (
        f"docs/plugins.md has no reference section '### `{signature}`'")


@pytest.mark.parametrize("name", sorted(hook_signatures()))
def test_hook_is_used_by_a_test(name: str) -> None:
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name]
    assert any(name in p.read_text() for p in tests), f"no test under tests/ mentions {name}"
