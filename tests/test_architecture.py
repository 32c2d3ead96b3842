"""The package's shape, checked from source (ast; nothing is imported): no import cycles inside
visual_search/, the engine side never imports gradio, and the UI never imports Qdrant or torch.

"Module level" means what runs when the module is imported: top-level statements, including ``try`` and
``if`` blocks, but not ``if TYPE_CHECKING:`` blocks and not imports inside functions (those run only
when called, and are how a rarely used heavy dependency is kept off the import path).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "visual_search"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements; with module_level, only those that run at import time."""
    if not module_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))
        return
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                stack += handler.body
        elif isinstance(node, ast.With):
            stack += node.body


def _imports(name: str, module_level: bool) -> set[str]:
    """Fully qualified names this module imports (a visual_search submodule where one is named)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree, module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in MODULES else base)
    return found


def _internal_graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, True) if m in MODULES and m != name} for name in MODULES}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return path[path.index(nxt) :] + [nxt]
            if colour[nxt] == WHITE and (cycle := visit(nxt)):
                return cycle
        colour[node] = BLACK
        path.pop()
        return None

    for start in sorted(graph):
        if colour[start] == WHITE and (cycle := visit(start)):
            return cycle
    return None


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_ui(name: str) -> bool:
    return name == "visual_search.ui" or name.startswith("visual_search.ui.")


def test_the_walk_sees_the_package() -> None:
    """Guards the checks below against passing vacuously (a wrong root finds no modules or no edges)."""
    graph = _internal_graph()
    assert {"visual_search.engine", "visual_search.cli.main", "visual_search.ui.app"} <= set(graph)
    assert "visual_search.engine" in graph["visual_search.cli.search"]
    assert "gradio" in {_top(m) for m in _imports("visual_search.ui.app", True)}
    assert "torch" in {_top(m) for m in _imports("visual_search.training.finetune.loop", True)}


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_at_module_level() -> None:
    cycle = _find_cycle(_internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not _is_ui(n)))
def test_engine_side_never_imports_gradio(name: str) -> None:
    """Anywhere in the module (functions too), and through everything it imports at module level."""
    graph = _internal_graph()
    direct = {_top(m) for m in _imports(name, False)}
    assert "gradio" not in direct
    reached = _reachable(name, graph)
    ui = sorted(m for m in reached if _is_ui(m))
    assert not ui, f"{name} reaches the UI at import: {ui}"
    assert not any("gradio" in {_top(m) for m in _imports(m, True)} for m in reached)


UI_FORBIDDEN = {"qdrant_client", "qdrant_edge", "torch"}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_ui(n)))
def test_ui_never_imports_qdrant_or_torch_directly(name: str) -> None:
    """Anywhere in a UI module, functions included: the UI talks to the engine, never to its parts."""
    assert not UI_FORBIDDEN & {_top(m) for m in _imports(name, False)}


ENGINE = "visual_search.engine"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_ui(n)))
def test_ui_reaches_qdrant_and_torch_only_through_the_engine(name: str) -> None:
    """Transitively, at import time, with the engine as the one door: the UI process does load torch
    and Qdrant (the engine it drives needs them), but no UI import may reach them another way (a UI
    module importing the store or an encoder directly, or a helper module that does)."""
    graph = {m: (set() if m == ENGINE else edges) for m, edges in _internal_graph().items()}
    offenders = {
        (m, top)
        for m in _reachable(name, graph) - {ENGINE}
        for top in {_top(i) for i in _imports(m, True)} & UI_FORBIDDEN
    } | {(m, "store/encoders") for m in _reachable(name, graph) if _is_store_or_encoder(m)}
    assert not offenders, sorted(offenders)


def _is_store_or_encoder(name: str) -> bool:
    return any(
        name == p or name.startswith(p + ".") for p in ("visual_search.store", "visual_search.encoders")
    )
