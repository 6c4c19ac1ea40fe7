"""The package's layers (docs/CONTRACTS.md): no module imports a higher layer, no import cycles.

Every ``import`` statement of every module counts — module level, inside functions and under
``if TYPE_CHECKING:`` — so a layer cannot lean on a higher one even lazily. Imports by name at
run time (``importlib.import_module``: the serialiser rebuilding a saved class, the evaluation's
substitutable compute functions) are not statements and are not checked.

``python tests/test_layers.py [ROOT]`` prints the import graph's size, the cycles and the
violations of any checkout (the layer table applies to the layered layout only).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "tie_tracing"
ROOT = Path(__file__).resolve().parents[1]

#: Areas of the package, low → high. A module may import its own area and lower ranks only,
#: so areas of equal rank (editing, evaluation) never import each other.
LAYERS: dict[str, int] = {
    "tie_tracing.core": 0,
    "tie_tracing.zoo": 1,
    "tie_tracing.tracing": 2,
    "tie_tracing.analysis": 3,
    "tie_tracing.editing": 4,
    "tie_tracing.evaluation": 4,
    "tie_tracing.figures": 5,
    "tie_tracing": 6,  # the top-level __init__: the public surface
    "tie_tracing.cli": 7,
}
#: Modules outside the area folders that belong to an area: the version string is a leaf;
#: `tie-tracing check` is part of the CLI; `_api` holds the top level's eagerly imported names.
PART_OF: dict[str, str] = {
    "tie_tracing._version": "tie_tracing.core",
    "tie_tracing.cli_check": "tie_tracing.cli",
    "tie_tracing._api": "tie_tracing",
}


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module of the package under ``root``."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _resolve(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path) -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}``, from every import statement."""
    mods = modules(root)

    def known(target: str) -> str | None:
        while target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        return target if target in mods else None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, is_package)
                # `from pkg import mod` imports the submodule; `from mod import f` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]  # fmt: skip
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    resolved = known(target)
                    if resolved is not None and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def area(module: str) -> str:
    """The area of ``module``: the longest :data:`LAYERS` key it lies in."""
    if module in PART_OF:
        return PART_OF[module]
    return max((a for a in LAYERS if module == a or module.startswith(a + ".")), key=len)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a higher layer or of another area of the same rank."""
    bad = []
    for module, targets in sorted(graph.items()):
        mine = area(module)
        for target in sorted(targets):
            theirs = area(target)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module} ({mine}) -> {target} ({theirs})")
    return bad


# ----------------------------------------------------------------------------------- tests


def test_every_module_has_a_layer():
    """Each module lies in one of the areas of :data:`LAYERS` (a new top-level module needs
    a place in the table, and docs/CONTRACTS.md)."""
    graph = imports(ROOT)
    stray = [m for m in graph if area(m) == PACKAGE and m != PACKAGE and m not in PART_OF]
    assert not stray, f"modules outside every layer: {stray}; add them to LAYERS"


def test_no_module_imports_a_higher_layer():
    """No module imports a module of a higher layer or of a sibling area of equal rank."""
    bad = violations(imports(ROOT))
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    """The import graph of the package's modules has no cycle (function-local imports too)."""
    found = cycles(imports(ROOT))
    assert not found, f"import cycles: {found}"


def test_tracing_never_imports_editing():
    """Tracing measures the model as it runs; it never reaches into the edit memory."""
    graph = imports(ROOT)
    bad = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if area(m) == "tie_tracing.tracing"
        for t in targets
        if area(t) == "tie_tracing.editing"
    ]
    assert not bad, bad


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a function-local upward import, an import under TYPE_CHECKING and a
    two-module cycle in a scratch package are all reported."""
    pkg = tmp_path / PACKAGE
    for folder in ("core", "figures"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..figures import b\n")
    (pkg / "core" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..figures.b import X\n"
    )
    (pkg / "figures" / "b.py").write_text("from ..core import a\nX = 1\n")
    (pkg / "figures" / "d.py").write_text("from . import e\n")
    (pkg / "figures" / "e.py").write_text("import tie_tracing.figures.d\n")
    graph = imports(tmp_path)
    assert graph["tie_tracing.core.a"] == {"tie_tracing.figures.b"}
    assert violations(graph) == [
        "tie_tracing.core.a (tie_tracing.core) -> tie_tracing.figures.b (tie_tracing.figures)",
        "tie_tracing.core.c (tie_tracing.core) -> tie_tracing.figures.b (tie_tracing.figures)",
    ]
    assert sorted(cycles(graph)) == [
        ["tie_tracing.core.a", "tie_tracing.figures.b"],
        ["tie_tracing.figures.d", "tie_tracing.figures.e"],
    ]


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    graph = imports(root)
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} import arrows")
    found = cycles(graph)
    print(f"{len(found)} import cycles")
    for component in found:
        print("  " + " ↔ ".join(m.removeprefix(PACKAGE + ".") for m in component))
    if (root / PACKAGE / "core").is_dir():
        bad = violations(graph)
        print(f"{len(bad)} imports against the layers")
        for line in bad:
            print("  " + line)
