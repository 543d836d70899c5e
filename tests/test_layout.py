"""The package layout: one folder per stage over ``core/``, no import loops, no backward imports.

Walks every import statement of the package with ``ast`` (module level and inside functions:
a lazy import is still a dependency) and checks the layering the README and ARCHITECTURE.md
describe.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "catalogtune"

# The pipeline's order: a layer may import itself and the layers before it, never a later one.
LAYERS = ["core", "data", "analyze", "rag", "train", "infer", "evaluate"]
# The front ends sit on top of every stage; no stage may import them.
TOP = {"app", "bench", "demo", "cli", "__main__", "__init__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports.

    ``from X import y`` is an import of ``X.y`` when that is a module, else of ``X``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {mod: _imports(p, set(files)) - {mod} for mod, p in files.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def backward_imports(g: dict[str, set[str]]) -> list[str]:
    """Imports that go against the layering, as 'a -> b' lines."""
    bad = []
    for mod, deps in g.items():
        src = _layer(mod)
        for dep in deps:
            dst = _layer(dep)
            if dst == src or dep == "catalogtune":
                continue
            if src in TOP:
                continue  # the front ends (CLI, app, bench, demo) may use every stage
            if dst in TOP or LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{mod} -> {dep}")
    return sorted(bad)


def test_every_module_sits_in_a_known_folder():
    layers = {_layer(m) for m in graph()}
    assert layers <= set(LAYERS) | TOP, f"modules outside the layout: {sorted(layers - set(LAYERS) - TOP)}"
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py", "demo.py"], flat


def test_no_import_cycles():
    assert find_cycle(graph()) is None


def test_no_stage_imports_a_later_stage_or_a_front_end():
    assert backward_imports(graph()) == []


def test_core_imports_only_core():
    g = graph()
    bad = [f"{m} -> {d}" for m, deps in g.items() if _layer(m) == "core" for d in deps if _layer(d) != "core"]
    assert bad == []


def test_the_checks_catch_a_loop_and_a_backward_import():
    g = {"catalogtune.core.a": {"catalogtune.train.b"}, "catalogtune.train.b": {"catalogtune.core.a"}}
    assert find_cycle(g) == ["catalogtune.core.a", "catalogtune.train.b", "catalogtune.core.a"]
    assert backward_imports(g) == ["catalogtune.core.a -> catalogtune.train.b"]
    assert backward_imports({"catalogtune.train.x": {"catalogtune.evaluate.y"}}) == [
        "catalogtune.train.x -> catalogtune.evaluate.y"
    ]
    assert backward_imports({"catalogtune.rag.x": {"catalogtune.app.jobs"}}) == ["catalogtune.rag.x -> catalogtune.app.jobs"]
