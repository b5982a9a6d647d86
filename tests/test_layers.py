"""Dependencies point one way: the import-linter contracts in pyproject.toml
hold, and they cover every top-level package of the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_top_level_package_is_a_root_of_the_contracts() -> None:
    project = _pyproject()
    roots = set(project["tool"]["importlinter"]["root_packages"])
    shipped = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    on_disk = {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if not path.parent.name.startswith(".")
    }
    assert shipped | on_disk | {"tests"} == roots, (
        "a top-level package is missing from [tool.importlinter] root_packages,"
        " so nothing checks its imports"
    )


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " 0 broken" in result.stdout


def test_the_client_library_imports_nothing_of_the_service() -> None:
    """segments_client (client/) is its own distribution: it must install and
    run without any package of this repository."""
    ours = set(_pyproject()["tool"]["importlinter"]["root_packages"])
    found: dict[str, set[str]] = {}
    sources = list((ROOT / "client" / "src").rglob("*.py"))
    assert sources, "no client sources found"
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            tops = {name.split(".")[0] for name in names} & ours
            if tops:
                found.setdefault(str(path.relative_to(ROOT)), set()).update(tops)
    assert found == {}
