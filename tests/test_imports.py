"""The ``baichuan`` package has no import circle (but the ones :data:`KNOWN_CIRCLES` records): no
module imports (directly or through others) a module that imports it back. Read from the source
with ``ast``, nothing imported: every ``import``
and ``from ... import`` counts, at module level or inside a function (a deferred import is still a
dependency), except those under ``if TYPE_CHECKING:`` (never executed). Importing ``a.b.c`` also
runs ``a/__init__`` and ``a/b/__init__``; those implicit parent-package edges are not counted, or
every package that re-exports a submodule would be a circle with it."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import baichuan

PACKAGE = Path(baichuan.__file__).resolve().parent


def _module_names(root: Path) -> tuple[dict[str, Path], set[str]]:
    """Python sources by dotted name, and every importable name (extension modules and stubs too)."""
    sources: dict[str, Path] = {}
    names: set[str] = set()
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".pyi", ".so") or "__pycache__" in path.parts:
            continue
        parts = [root.name, *path.relative_to(root).parent.parts, path.name.split(".")[0]]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        names.add(name)
        if path.suffix == ".py":
            sources[name] = path
    return sources, names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or ""), [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _absolute(module: str, importer: str, is_package: bool) -> str:
    level = len(module) - len(module.lstrip("."))
    if not level:
        return module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - level + 1]
    rest = module[level:]
    return ".".join(base + ([rest] if rest else []))


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """importer -> {imported module of the package: line of the first such import}."""
    sources, names = _module_names(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in sources.items():
        edges: dict[str, int] = {}
        for line, module, imported in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            module = _absolute(module, name, path.name == "__init__.py")
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` the package
            targets = [f"{module}.{n}" if f"{module}.{n}" in names else module for n in imported] or [module]
            for target in targets:
                while target and target not in names:  # `import a.b.c` of a name below a module
                    target = target.rpartition(".")[0]
                if target in sources and target != name:
                    edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a closed path, first module repeated at the end) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:  # a shortest closed path through the group's first module
        members = set(group)
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        cycle: list[str] = []
        while frontier and not cycle:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w in members and w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


# Circles known and not yet removed, each as the set of its modules. Not an allowance: the test
# fails as soon as one is gone (delete its line then) and for any other circle.
# (launch <-> train is gone: what both need lives in baichuan.extensions.)
KNOWN_CIRCLES: list[frozenset[str]] = []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph.get("baichuan.evaluation.runner")  # the walk found the package's modules
    cycles = find_cycles(graph)
    new = [c for c in cycles if frozenset(c) not in KNOWN_CIRCLES]
    described = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(c)) + f" -> {c[-1]}" for c in new
    ]
    assert not new, "import circles:\n" + "\n".join(described)
    gone = [sorted(k) for k in KNOWN_CIRCLES if k not in {frozenset(c) for c in cycles}]
    assert not gone, f"no longer a circle, remove from KNOWN_CIRCLES: {gone}"


def test_cycle_finder_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a circle made by an import inside a function, through a relative import,
    is found; one through ``if TYPE_CHECKING:`` or a parent package's ``__init__`` is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub.a import A\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\nA = 1\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.sub.a import A\n    return A\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nimport pkg.sub.b\nif TYPE_CHECKING:\n    from pkg.sub import d\n"
    )
    (pkg / "sub" / "d.py").write_text("import pkg.sub.c\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub.b": 1} and graph["pkg.sub.b"] == {"pkg.sub.a": 2}
    assert graph["pkg.sub.c"] == {"pkg.sub.b": 2}
    assert find_cycles(graph) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]
