"""Shared fixtures: real llama.cpp servers on loopback, and the CI rule for missing servers.

A test that needs a server it cannot start fails with a clear message when `CI` is set;
outside CI it is skipped, so a contributor without the `local` extra can still run the rest.
"""

from __future__ import annotations

import importlib.util
import logging
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
