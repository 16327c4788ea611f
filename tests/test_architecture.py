"""The import graph stays one-way: core <- workers <- metrics <- orchestrator, with no cycles.

Parses every module's imports, at module level and inside functions, so a cycle cannot hide
behind a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "workers", "metrics", "orchestrator")  # each may import only itself and those before it


def project_modules() -> dict[str, Path]:
    mods = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def imports_of(path: Path, modules: set[str], package: str) -> set[str]:
    """Project modules `path` imports anywhere in its body (`from a import b` counts a.b if it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in LAYERS:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    names = set(mods)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(path, names, package) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a list of modules (first == last), or [] when the graph is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [f"{mod} imports {dep}" for mod, deps in import_graph().items() for dep in sorted(deps)
              if rank[dep.split(".")[0]] > rank[mod.split(".")[0]]]
    assert not upward, "imports against the layering (core <- workers <- metrics <- orchestrator):\n" + "\n".join(upward)


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    # The checker itself must catch what it is for: a cycle closed by an import inside a function.
    pkg = tmp_path / "workers"
    pkg.mkdir()
    (pkg / "a.py").write_text("import workers.b\n")
    (pkg / "b.py").write_text("def f():\n    from workers.a import g\n")
    names = {"workers.a", "workers.b"}
    graph = {n: imports_of(pkg / f"{n.split('.')[1]}.py", names, "workers") - {n} for n in names}
    assert graph == {"workers.a": {"workers.b"}, "workers.b": {"workers.a"}}
    assert find_cycle(graph) in (["workers.a", "workers.b", "workers.a"], ["workers.b", "workers.a", "workers.b"])


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_has_modules(layer):
    assert any(name.startswith(layer + ".") for name in project_modules()), f"{layer}/ has no modules"
