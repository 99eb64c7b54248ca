"""Imports run one way: router → providers, router → policies; never back, never across."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"providers": {"router", "policies"}, "policies": {"router", "providers"}}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports at run time (imports under `if TYPE_CHECKING:` are types only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


# The parts of `router/`, lowest first: each may import only the parts below it (and itself).
FLOORS = ["errors", "config", "cache", "path", "observe", "engine", "transport", "client", "local", "cli", "gateway"]


def _part(module: str) -> str | None:
    """`router.path.stats` → `path`; `router.client` → `client`; other packages → None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "router" and len(parts) > 1 else None


def test_router_parts_import_only_the_floors_below() -> None:
    """The folder tree is the architecture: config ← cache ← the request path ← observers ← the
    client ← CLI and gateway. An upward import (say, config reaching into the path) fails here."""
    offenders = {}
    for path in sorted((ROOT / "router").rglob("*.py")):
        relative = path.relative_to(ROOT / "router")
        own = relative.parts[0].removesuffix(".py")
        if own not in FLOORS:
            continue
        above = set(FLOORS[FLOORS.index(own) + 1 :])
        upward = sorted(m for m in imported_modules(path) if _part(m) in above)
        if upward:
            offenders[str(relative)] = upward
    assert offenders == {}


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
