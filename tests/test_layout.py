"""Package layout: what ``centermask2.modeling`` may import, and no import cycles.

Read from the source with ``ast`` (nothing is imported), counting every import statement:
module level, inside functions and under ``TYPE_CHECKING``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "centermask2"

# what the network may not depend on: it takes config objects and tensors, it is not handed them
# by importing the packages that read files, run stages or parse arguments
FORBIDDEN_FOR_MODELING = tuple(
    f"centermask2.{name}" for name in ("data", "engine", "offline", "export", "cli", "config")
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module; ``from X import a`` gives X and,
    when ``X.a`` is a module, ``X.a`` too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # a package's own name is its level-1 anchor; a module's is its package
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if f"{target}.{a.name}" in MODULES]
    return found


def _graph(prefix: str, module_level_only: bool = False) -> dict[str, set[str]]:
    """Import edges among the modules named ``prefix`` or ``prefix.*`` (self-imports dropped)."""

    def inside(m: str) -> bool:
        return m == prefix or m.startswith(prefix + ".")

    return {
        name: {t for _, t in _imports(name, path, module_level_only) if t in MODULES and inside(t) and t != name}
        for name, path in MODULES.items()
        if inside(name)
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_module_names_resolve():
    # guards the graph itself: relative imports must land on real modules
    assert "centermask2.modeling.layers.padding" in MODULES
    graph = _graph("centermask2.modeling")
    assert "centermask2.modeling.layers" in graph["centermask2.modeling.roi_heads"]
    assert "centermask2.modeling.layers.padding" in graph["centermask2.modeling.layers.blocks"]
    assert "centermask2.modeling.ops.registry" in graph["centermask2.modeling.layers.blocks"]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("centermask2.modeling")))
def test_modeling_imports_no_outer_package(name):
    bad = [
        f"line {line}: {target}"
        for line, target in _imports(name, MODULES[name])
        if any(target == f or target.startswith(f + ".") for f in FORBIDDEN_FOR_MODELING)
    ]
    assert not bad, f"{name} imports outside the network: {bad}"


def test_no_import_cycle_within_modeling():
    """Counting function-local imports: no layer needs a lazy import to break a circle."""
    cycle = _find_cycle(_graph("centermask2.modeling"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_at_module_level():
    """What runs at import time, across the whole package."""
    cycle = _find_cycle(_graph("centermask2", module_level_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
