"""The seams the code keeps: no import cycle between packages, no import of another package's
private names, one place that decides what a memory kind is, a store module of bounded size,
a RAG core and a server that do not need LangChain."""

from __future__ import annotations

import ast
import collections
import re
from pathlib import Path

import memrag

ROOT = Path(memrag.__file__).parent


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """``from memrag... import`` statements outside ``if TYPE_CHECKING:`` blocks (lazy ones too)."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and id(node) not in typing_only
        and (node.module or "").startswith("memrag.")
    ]


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, tree in _modules().items():
        for node in _runtime_imports(tree):
            if _package(node.module) != _package(name):
                edges[_package(name)].add(_package(node.module))

    def reaches(start: str, goal: str) -> bool:
        todo, seen = [start], set()
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(edges.get(current, ()))
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a)})
    assert cycles == []


def test_no_package_imports_another_packages_private_names() -> None:
    offences = []
    for name, tree in _modules().items():
        for node in _runtime_imports(tree):
            if _package(node.module) == _package(name):
                continue
            private_module = any(part.startswith("_") for part in node.module.split(".")[1:])
            private_names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private_module or private_names:
                offences.append(f"{name}: from {node.module} import {', '.join(a.name for a in node.names)}")
    assert offences == []



def test_no_module_imports_another_modules_private_names() -> None:
    """Within a package too: a helper two modules share is public (e.g. ``cli.common.load_compressor``)."""
    offences = []
    for name, tree in _modules().items():
        for node in _runtime_imports(tree):
            if node.module == name:
                continue
            private_names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private_names:
                offences.append(f"{name}: from {node.module} import {', '.join(private_names)}")
    assert offences == []


def test_what_a_memory_kind_is_is_decided_by_the_registry_alone() -> None:
    pattern = re.compile(r"\bis_kv\b|== \"kv\"|== 'kv'")
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in ROOT.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_the_store_module_stays_small() -> None:
    lines = (ROOT / "store" / "memory_store.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 600
