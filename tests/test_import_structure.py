"""nseg_infer's import structure, read from the source with `ast`: every import counts, those inside
functions too (deferring an import hides a cycle from the interpreter, not from the reader).

- no import cycle between nseg_infer's modules;
- no two subpackages (`sources`, `engine`, `sinks`, `runners`) import each other;
- `regions` (the words sources and engine share) imports no subpackage, and sources and the
  engine never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "packages" / "nseg-infer" / "src"
PACKAGE = "nseg_infer"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules `path` imports anywhere in its body (a `from X import y` counts X.y
    when that is a module, else X)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / PACKAGE).rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, m, modules) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    """The subpackage (or top-level module) a module lives in."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def room_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(room(a), room(b)) for a, deps in graph.items() for b in deps if room(a) != room(b)}


def test_the_checks_see_a_deferred_cycle_and_two_rooms_importing_each_other(tmp_path):
    """The checks below can fail: a cycle closed by an import inside a function is found, and so
    are two subpackages that import each other."""
    pkg = tmp_path / PACKAGE
    for sub in ("engine", "sources"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text("from nseg_infer.sources.b import f\n")
    (pkg / "sources" / "b.py").write_text("def f():\n    from ..engine import a\n    return a\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["nseg_infer.engine.a", "nseg_infer.sources.b"]]
    assert {("engine", "sources"), ("sources", "engine")} <= room_edges(graph)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g = import_graph(ROOT)
    assert len(g) > 40 and "nseg_infer.engine.predictor" in g  # the real package was read
    return g


def test_no_import_cycle_counting_deferred_imports(graph):
    assert cycles(graph) == []


def test_no_two_subpackages_import_each_other(graph):
    edges = room_edges(graph)
    both = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert both == []


def test_sources_and_engine_meet_only_in_regions(graph):
    edges = room_edges(graph)
    assert ("engine", "sources") not in edges
    assert ("sources", "engine") not in edges
    assert not graph[f"{PACKAGE}.regions"]  # the shared words import no room
    assert ("engine", "regions") in edges and ("sources", "regions") in edges


def test_each_room_imports_only_the_rooms_above_it(graph):
    """regions <- sources, engine <- sinks <- runners (the package's `__init__` exports runners' API)."""
    above = {"sources": {"regions"}, "engine": {"regions"}, "sinks": {"regions", "engine"},
             "runners": {"regions", "sources", "engine", "sinks"}, "nseg_infer": {"runners"}, "regions": set()}
    assert sorted((a, b) for a, b in room_edges(graph) if b not in above[a]) == []
