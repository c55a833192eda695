"""Imports run one way: each layer imports only the layers below it, so no module imports back into
one that imports it (no cycle), and no data module knows about evaluation. Read from the source with
``ast``, imports inside functions included: a deferred import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Lower numbers are lower layers; a module may import its own layer's package and anything lower.
LAYERS = {
    "errors": 0, "files": 0,
    "config": 1, "recipes": 1, "device": 1, "checkpoint": 1,
    "data": 2, "models": 3, "tasks": 4, "run": 5, "engine": 6, "evaluation": 7, "deploy": 8,
    "api": 9, "tune": 10, "scale": 10, "cli": 11, "__main__": 12, "bigmodel": 12,
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports; ``from package import submodule`` is the submodule."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(known)
            found |= submodules if submodules else {node.module}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_every_module_has_a_layer():
    assert {layer(m) for m in graph()} <= set(LAYERS)


def test_there_is_no_import_cycle():
    assert cycle(graph()) is None


@pytest.mark.parametrize("module", sorted(graph()))
def test_a_module_imports_only_its_own_layer_and_those_below(module: str):
    upward = [t for t in graph()[module] if LAYERS[layer(t)] > LAYERS[layer(module)]]
    assert upward == [], f"{module} imports {upward}, a layer above its own"


def test_the_check_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
