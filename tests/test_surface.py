"""The public surface: what each package exports is exactly its ``__all__`` (as anyio's
``tests/test_all_attributes.py`` checks), no package reaches into another's private modules,
and importing the host does not pay for the adapter side's server."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "hearth": ROOT / "host" / "src" / "hearth",
    "hearth_adaptersdk": ROOT / "adaptersdk" / "src" / "hearth_adaptersdk",
    "hearth_adapter_fake": ROOT / "adapters" / "fake" / "src" / "hearth_adapter_fake",
    "hearth_adapter_docker": ROOT / "adapters" / "docker" / "src" / "hearth_adapter_docker",
    "hearth_adapter_tfgrid": ROOT / "adapters" / "tfgrid" / "src" / "hearth_adapter_tfgrid",
    "hearth_adapter_kustomize": ROOT / "adapters" / "kustomize" / "src" / "hearth_adapter_kustomize",
}
PUBLIC_MODULES = [*PACKAGES, "hearth_adaptersdk.transport"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_name_is_in_all_and_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    declared = set(module.__all__)
    missing = sorted(item for item in declared if not hasattr(module, item))
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    public = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_") and not isinstance(value, types.ModuleType)
    }
    undeclared = sorted(public - declared)
    assert not undeclared, f"{name} exports names missing from __all__: {undeclared}"


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _sources() -> list[tuple[str, Path]]:
    sources = [
        (package, path) for package, folder in PACKAGES.items() for path in sorted(folder.rglob("*.py"))
    ]
    sources += [("scripts", path) for path in sorted((ROOT / "scripts").glob("*.py"))]
    return sources


def test_no_package_imports_another_packages_private_modules() -> None:
    offences = []
    for owner, path in _sources():
        for line, target in _imports(path):
            top, *rest = target.split(".")
            if top in PACKAGES and top != owner and any(part.startswith("_") for part in rest):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offences, "private modules used across packages:\n" + "\n".join(offences)


@pytest.mark.subprocess
def test_importing_the_host_does_not_load_the_adapter_server_side() -> None:
    code = (
        "import sys, hearth, hearth._cli; "
        "print(sorted(m for m in ('jsonrpcserver', 'jsonschema') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.subprocess
def test_the_sdk_loads_its_server_side_on_first_use() -> None:
    code = (
        "import sys, hearth_adaptersdk as sdk; before = 'jsonrpcserver' in sys.modules; "
        "sdk.serve; print(before, 'jsonrpcserver' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.subprocess
def test_hearth_ls_loads_neither_asyncio_nor_the_models_nor_httpx(tmp_path: Path) -> None:
    """``hearth ls`` reads the home's file on the standard library (issue 19: it had regressed 3x
    unnoticed when the listing path loaded the async stores)."""
    code = (
        "import sys\n"
        "from hearth._cli import main\n"
        f"code = main(['ls', '--home', {str(tmp_path / 'home')!r}, '--project', {str(tmp_path)!r}])\n"
        "heavy = ('asyncio', 'ssl', 'pydantic', 'httpx', 'hearth._models', 'hearth._store._sqlite')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr.strip().splitlines()[-1] == "0 []", done.stderr
