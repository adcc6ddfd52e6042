"""The import arrows of ``envs``: no circle inside ``envs/deepracer``, ``track.py`` at the bottom, no ``rlhf``.

Read from the source with ``ast`` (module level and inside functions, relative and absolute), so a lazy
import cannot hide a circle that only bites when some function first runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

ENVS = Path(__file__).resolve().parents[2] / "envs"
PACKAGE = ENVS / "deepracer"
PACKAGE_NAME = "envs.deepracer"


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of everything ``path`` imports; ``from pkg import name`` counts as
    ``pkg.name`` when that is a module of this repository, else as ``pkg``."""
    package = list(path.relative_to(ENVS.parent).parent.parts)  # what a leading "." stands for
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                is_module = (ENVS.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
                out.add(sub if is_module else module)
    return out


def sibling_graph() -> dict[str, set[str]]:
    """Module stem -> stems of the ``envs/deepracer`` modules it imports (``__init__`` for the package)."""
    stems = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        deps = set()
        for name in imported_modules(path):
            if name == PACKAGE_NAME:
                deps.add("__init__")
            elif name.startswith(PACKAGE_NAME + "."):
                stem = name[len(PACKAGE_NAME) + 1:].split(".")[0]
                assert stem in stems, f"{path.name} imports {name}, which does not exist"
                deps.add(stem)
        deps.discard(path.stem)
        graph[path.stem] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_reader_sees_lazy_relative_and_absolute_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    names = imported_modules(PACKAGE / "env.py")
    assert {f"{PACKAGE_NAME}.vector_env", f"{PACKAGE_NAME}.sim"} <= names   # module-level relative
    assert f"{PACKAGE_NAME}.render" in names                                  # inside render()
    assert f"{PACKAGE_NAME}.car" in imported_modules(PACKAGE / "sim.py")      # `from . import car`
    assert "gymnasium" in imported_modules(PACKAGE / "__init__.py")            # inside register()
    absolute = imported_modules(Path(__file__).with_name("test_deepracer_env.py"))
    assert {f"{PACKAGE_NAME}.car", PACKAGE_NAME, "envs"} <= absolute


def test_deepracer_has_no_import_circle():
    cycle = find_cycle(sibling_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_track_module_imports_no_sibling():
    assert sibling_graph()["track"] == set()
    assert not any(name.startswith("envs") for name in imported_modules(PACKAGE / "track.py"))


def test_envs_never_import_rlhf():
    offenders = {str(p.relative_to(ENVS.parent)): sorted(n for n in imported_modules(p)
                                                         if n == "rlhf" or n.startswith("rlhf."))
                 for p in ENVS.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}
