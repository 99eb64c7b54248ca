"""Imports run one way: router → providers, router → policies; never back, never across."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"providers": {"router", "policies"}, "policies": {"router", "providers"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upward(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_policies_do_no_io() -> None:
    """Policies rank from the stats they are given: no HTTP, sockets, files or clocks of their own."""
    io_modules = {"httpx2", "httpx", "socket", "anyio", "asyncio", "time", "os", "pathlib", "open"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & io_modules)
        for path in sorted((ROOT / "policies").rglob("*.py"))
        if imported_packages(path) & io_modules
    }
    assert offenders == {}


def test_import_router_is_cheap() -> None:
    """`import router` defers the openai types until a client is made."""
    import subprocess
    import sys

    code = "import sys, router; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
