"""The arrows of DESIGN.md, checked on the source: no import circle, a self-contained PPO core."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_groups(path: Path) -> list[tuple[str, set[str]]]:
    """Each import in ``path`` (module level or inside functions) as (module, {module.name, ...}),
    relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    groups = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            groups += [(alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            groups.append((base, {f"{base}.{alias.name}" for alias in node.names}))
    return groups


def imports(path: Path) -> set[str]:
    return {m for base, names in import_groups(path) for m in (base, *names)}


def graph(package: str) -> dict[str, set[str]]:
    """Edges between the package's modules. ``from pkg import submodule`` is an edge to the submodule
    only: that import does not need ``pkg/__init__`` to have finished."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    g = {}
    for name, path in files.items():
        edges = set()
        for base, names in import_groups(path):
            submodules = names & files.keys()
            edges |= submodules or ({base} & files.keys())
        g[name] = edges - {name}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_circle_in_rlhf():
    """(envs/ has its own check in tests/envs/test_import_graph.py.)"""
    assert find_cycle(graph("rlhf")) is None, f"import circle: {find_cycle(graph('rlhf'))}"


def test_ppo_core_imports_only_torch_and_precision():
    for path in (ROOT / "rlhf" / "ppo").rglob("*.py"):
        for m in imports(path):
            top = m.split(".")[0]
            assert top in ("torch", "__future__", "collections", "dataclasses", "typing", "math") or \
                m.startswith(("rlhf.ppo", "rlhf.precision")) or m == "rlhf", f"{path.name} imports {m}"


def test_evaluation_and_cli_build_policies_without_the_trainer():
    for path in [ROOT / "rlhf" / "evaluate.py", *(ROOT / "rlhf" / "text").glob("*.py")]:
        assert "rlhf.trainer" not in imports(path), path.name
    cli = ast.parse((ROOT / "rlhf" / "cli.py").read_text())
    for fn in (n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name not in ("cmd_train", "_trainer")):
        assert "rlhf.trainer" not in ast.unparse(fn), fn.name
