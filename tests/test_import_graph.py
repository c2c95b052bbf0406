"""The core's imports: ``specplug.drafters`` imports top-down (no cycle, function-level
imports included) and names no engine module, not even in a string."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

import specplug.drafters

PACKAGE = "specplug.drafters"
ROOT = pathlib.Path(specplug.drafters.__file__).parent
MODULES = {p.stem: p for p in sorted(ROOT.glob("*.py"))}
#: engine packages the core must not import or name (prose like "SGLang" in messages is fine)
ENGINE_MODULES = re.compile(r"\b(sglang|vllm|text_generation_server)\b")


def _trees() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in MODULES.items()}


def imports_of(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement, at any depth (late ones too)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif node.level == 1:
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                base = "specplug" + (f".{node.module}" if node.module else "")  # from .. (outside the core)
            out.append((node.lineno, base))
            # "from . import x" / "from specplug.drafters import x": x may be a module
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports."""
    graph: dict[str, set[str]] = {}
    for mod, tree in _trees().items():
        deps = set()
        for _, name in imports_of(tree):
            if name.startswith(PACKAGE + "."):
                head = name[len(PACKAGE) + 1 :].split(".")[0]
                if head in MODULES and head != mod:
                    deps.add(head)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                ids.add(id(body[0].value))
    return ids


def test_the_graph_sees_late_imports():
    graph = import_graph()
    assert {"base", "errors", "tree", "registry"} <= set(graph)
    assert "diffusion_model" in graph["diffusion"]  # a function-level import, counted
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_drafters_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        f"import cycle in {PACKAGE}: {' -> '.join(cycle)}; move what the modules share "
        f"to the module it describes (or below both) instead of importing late"
    )


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_core_imports_and_names_no_engine(mod):
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    for line, name in imports_of(tree):
        assert not ENGINE_MODULES.search(name), f"drafters/{mod}.py:{line} imports {name}"
        assert not name.startswith("specplug.") or name.startswith(PACKAGE + ".") or name == PACKAGE, (
            f"drafters/{mod}.py:{line} imports {name}: the core imports nothing outside {PACKAGE}"
        )
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            assert not ENGINE_MODULES.search(node.value), (
                f"drafters/{mod}.py:{node.lineno} names an engine module in a string: {node.value[:80]!r}"
            )
