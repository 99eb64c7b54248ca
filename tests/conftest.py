"""Shared fixtures: real llama.cpp servers on loopback, and the CI rule for missing servers.

A test that needs a server it cannot start fails with a clear message when `CI` is set;
outside CI it is skipped, so a contributor without the `local` extra can still run the rest.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere: a missing server must never pass silently in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_local_extra() -> None:
    """The llama.cpp servers need the `local` extra (xllamacpp, gguf, numpy)."""
    missing = [m for m in ("xllamacpp", "gguf", "numpy") if importlib.util.find_spec(m) is None]
    if missing:
        unavailable(f"llama.cpp tests need {', '.join(missing)}: pip install -e '.[test]'")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight GGUF model, generated once per test session."""
    require_local_extra()
    from router.local.tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


def _start(model: Path, name: str) -> object:
    from router.local.llamacpp_server import LlamaCppServer, LlamaCppServerError

    server = LlamaCppServer(model, log_path=model.with_name(f"{name}.log"))
    try:
        return server.start()
    except LlamaCppServerError as exc:
        unavailable(f"cannot start a llama.cpp server: {exc}")
        raise


@pytest.fixture(scope="session")
def llama_pair(tiny_model: Path) -> Iterator[tuple[object, object]]:
    """Two real llama.cpp servers shared by tests that don't kill them."""
    first = _start(tiny_model, "first")
    second = _start(tiny_model, "second")
    yield first, second
    for server in (first, second):
        server.stop()  # type: ignore[attr-defined]


@pytest.fixture
def llama_server(tiny_model: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """A server of the test's own, free to kill."""
    server = _start(tiny_model, request.node.name)
    yield server
    server.stop()  # type: ignore[attr-defined]
