"""Shared fixtures: real llama.cpp servers on loopback, and the CI rule for missing servers.

A test that needs a server it cannot start fails with a clear message when `CI` is set;
outside CI it is skipped, so a contributor without the `local` extra can still run the rest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch as mock_patch

import httpx2
import pytest
import respx

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


def mockable_client() -> httpx2.AsyncClient:
    """The backends' client on httpx2's own transport (httpcore2), which respx mocks."""
    return httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
        timeout=httpx2.Timeout(None, connect=5.0),
    )


@contextlib.contextmanager
def mocked_backends(**options: Any) -> Iterator[respx.Router]:
    """respx over httpx2, and routers made meanwhile reaching their backends through it (production
    sends through aiohttp, `providers/http.py`, which respx does not see): nothing leaves the process."""
    with respx.mock(using="httpcore2", **options) as mock, mock_patch("router.engine.pooled_client", mockable_client):
        yield mock


@pytest.fixture(scope="session", autouse=True)
def aiohttp_stays_on_loopback() -> Iterator[None]:
    """No test reaches the internet: the production transport may only talk to this machine (hosted
    providers are mocked through `httpx2_mock` / `mocked_backends`, which swap it for httpx2's)."""
    from urllib.parse import urlsplit

    from providers.http import AiohttpTransport

    original = AiohttpTransport._open_response

    async def loopback_only(self: AiohttpTransport, method: str, url: str, **kwargs: Any) -> Any:
        host = urlsplit(url).hostname or ""
        if not (host in ("localhost", "::1") or host.startswith("127.")):
            raise AssertionError(
                f"a test sent {method} {url} through aiohttp: mock hosted providers with "
                "the httpx2_mock fixture or tests.conftest.mocked_backends"
            )
        return await original(self, method, url, **kwargs)

    with mock_patch.object(AiohttpTransport, "_open_response", loopback_only):
        yield


@pytest.fixture
def httpx2_mock(httpx2_mock: respx.Router) -> Iterator[respx.Router]:
    """pytest-httpx2's fixture, with routers made while it is active reaching backends through the
    transport it mocks; everywhere else, loopback-server tests included, they use aiohttp, as in production."""
    with mock_patch("router.engine.pooled_client", mockable_client):
        yield httpx2_mock


class _EveryLogLine(logging.Handler):
    """Keeps the formatted text of every log record the suite produces, at every level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


CHILD_SITE = Path(__file__).resolve().parent / "child_site"
CHILD_LOGS_VAR = "ROUTER_TEST_CHILD_LOGS"


def child_logs(folder: Path) -> tuple[str, set[str]]:
    """What the child processes wrote to `folder` (see `child_site/sitecustomize.py`): their log
    lines and stderr, and the API keys they were configured with."""
    text: list[str] = []
    keys: set[str] = set()
    for path in sorted(folder.glob("*.log")):
        text.append(path.read_text(errors="replace"))
    for path in sorted(folder.glob("*.keys")):
        keys.update(line for line in path.read_text().splitlines() if len(line) >= 6)
    return "\n".join(text), keys


def leaked(keys: set[str], text: str) -> list[str]:
    """The keys found in `text`, shortened so the failure message does not leak them in turn."""
    return sorted(key[:4] + "…" for key in keys if key in text)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Grep all log output of the whole suite — child processes included — for every API key.

    Every adapter's key is recorded as it is made; at the end of the session none of them
    (long enough to grep for) may appear in any log line, traceback included. Every Python child
    process a test starts inherits `PYTHONPATH` with `child_site/`, whose `sitecustomize` writes
    the child's log lines, stderr and configured keys to a folder read here at the end.
    """
    from providers.base import OpenAICompatible

    folder = tmp_path_factory.mktemp("child-logs")
    saved_env = {name: os.environ.get(name) for name in (CHILD_LOGS_VAR, "PYTHONPATH")}
    os.environ[CHILD_LOGS_VAR] = str(folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHILD_SITE), saved_env["PYTHONPATH"]) if p)

    keys: set[str] = set()
    original = OpenAICompatible.__init__

    def recording(self: OpenAICompatible, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        if self._api_key and len(self._api_key) >= 6:
            keys.add(self._api_key)

    OpenAICompatible.__init__ = recording  # type: ignore[method-assign]
    capture = _EveryLogLine()
    loggers = [logging.getLogger(name) for name in ("router", "providers", "policies", "httpx2", "httpcore2")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        yield
    finally:
        root.removeHandler(capture)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        OpenAICompatible.__init__ = original  # type: ignore[method-assign]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    text = "\n".join(capture.lines)
    found = leaked(keys, text)
    assert not found, f"API keys found in log output: {found}"
    child_text, child_keys = child_logs(folder)
    found = leaked(keys | child_keys, child_text)
    assert not found, f"API keys found in the log output or stderr of a child process: {found} (logs in {folder})"


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
        unavailable(f"cannot start a llama.cpp server ({exc}): it comes from the local extra, pip install -e '.[test]'")
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
