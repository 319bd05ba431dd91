"""The host's layers, bottom-up, and no import cycles (issue 19).

Each module of ``hearth`` belongs to a layer; it may import only from its own layer or below,
and the import graph (module level and inside functions, ``TYPE_CHECKING`` blocks aside) has
no cycle. Both are read from the source with ``ast``, so an import hidden inside a function
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "host" / "src" / "hearth"

#: Bottom to top. A module imports only from its layer or a lower one.
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"hearth._errors"}),
    (
        "models, states, settings, dirs, api",
        {
            "hearth._models",
            "hearth._error_json",
            "hearth._states",
            "hearth._settings",
            "hearth._dirs",
            "hearth._api",
            "hearth._address",
            "hearth._labels",
            "hearth._observe",
            "hearth._actors",
        },
    ),
    ("store, adapters", {"hearth._store", "hearth._adapters"}),
    ("lifecycle", {"hearth._lifecycle"}),
    ("server, remote", {"hearth._server", "hearth._serve", "hearth._remote", "hearth._remote_wire"}),
    ("cli", {"hearth._cli"}),
]


def _module_name(path: Path) -> str:
    parts = ["hearth", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    names = [alias.name for alias in node.names]
    if base == "hearth" and names == ["__version__"]:
        return []  # the façade's version string (read from the package metadata), no module
    return [base, *(f"{base}.{name}" for name in names)]


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        hidden = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in hidden:
                continue
            if isinstance(node, ast.ImportFrom):
                candidates = _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for target in candidates:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_every_module_of_the_host_has_a_layer() -> None:
    graph = _graph()
    unplaced = sorted(m for m in graph if m != "hearth" and _layer(m) is None)
    assert not unplaced, f"modules with no layer in tests/test_layers.py: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    offences = []
    for module, targets in _graph().items():
        own = _layer(module)
        if own is None:
            continue  # the package's __init__: the public façade over every layer, loaded lazily
        for target in sorted(targets):
            theirs = _layer(target)
            if target == "hearth" or (theirs is not None and theirs > own):
                offences.append(
                    f"{module} ({LAYERS[own][0]}) imports {target} "
                    f"({'the package façade' if theirs is None else LAYERS[theirs][0]})"
                )
    assert not offences, "imports against the layer order:\n" + "\n".join(offences)


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_an_import_inside_a_function_and_skip_type_checking_blocks() -> None:
    """The check itself: an import in a function body is an edge; one under TYPE_CHECKING is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .._cli import _main\n"
        "def f() -> None:\n"
        "    from .._lifecycle import _host\n"
    )
    tree = ast.parse(source)
    hidden = _type_checking_lines(tree)
    found = [
        target
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.lineno not in hidden and node.level
        for target in _resolve("hearth._store._sqlite", False, node)
    ]
    assert found == ["hearth._lifecycle", "hearth._lifecycle._host"]
    assert _layer("hearth._lifecycle._host") == 3 > (_layer("hearth._store._sqlite") or 0)
