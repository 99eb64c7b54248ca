"""A real `redis-server` on loopback for tests: started in a temp dir, stopped or killed by PID.

    redis_server = redis_fixture()          # in a test module: a fixture of that name

    def test_x(redis_server: RedisServer) -> None:
        store = RedisStore(redis_server.url)
        redis_server.kill()                 # SIGKILL, like a crash
        redis_server.start()                # again, on the same port

The server keeps nothing on disk (`--save "" --appendonly no`), listens only on 127.0.0.1 on a
free port, and is ready when it answers PING. Without `redis-server` on PATH (Debian package
`redis-server`) or the `redis` package, the fixture fails when `CI` is set and skips otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable

__all__ = ["RedisServer", "RedisServerError", "redis_fixture", "require_redis_server"]

_READY_S = 10.0


class RedisServerError(RuntimeError):
    """The server did not start (or answer PING) in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` process in `directory`; `port` is picked on the first `start` and kept."""

    def __init__(self, directory: Path, *, password: str | None = None, binary: str = "redis-server") -> None:
        self.directory = Path(directory)
        self.password = password
        self.binary = binary
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "redis-server.log"

    @property
    def url(self) -> str:
        """`redis://[:password@]127.0.0.1:PORT/0`."""
        if self.port is None:
            raise RedisServerError("the server has not been started")
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.port is not None else 3  # a fresh free port can be taken before we bind it
        for attempt in range(attempts):
            port = self.port if self.port is not None else _free_port()
            self.process = self._spawn(port)
            try:
                self._wait_ready(port)
            except RedisServerError:
                self._reap()
                if attempt == attempts - 1:
                    raise
                continue
            self.port = port
            return self
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        argv = [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_ready(self, port: int) -> None:
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=port, password=self.password, socket_connect_timeout=0.2, socket_timeout=0.5
        )
        deadline = time.monotonic() + _READY_S
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise RedisServerError(f"redis-server exited at start: {self._log_tail()}")
                with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RedisServerError(f"redis-server did not answer PING in {_READY_S:.0f} s: {self._log_tail()}")
                time.sleep(0.01)
        finally:
            client.close()

    def flush(self) -> None:
        """Empty every database (FLUSHALL), for a server shared by several tests."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        try:
            client.flushall()
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL by PID, like a crash; returns once the process is gone (its port is free again)."""
        self._reap()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self._reap()


def require_redis_server() -> str:
    """The `redis-server` binary, or fail (CI) / skip (elsewhere) with how to get it."""
    if importlib.util.find_spec("redis") is None:
        unavailable("the Redis tests need the redis package: pip install -e '.'")
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not on PATH: apt-get install redis-server")
        raise AssertionError("unreachable")
    return binary


def redis_fixture(*, password: str | None = None, scope: Any = "function") -> Callable[..., Any]:
    """A pytest fixture yielding a started `RedisServer` of its own, stopped at teardown.

    Bind it to a name in a test module: `redis_server = redis_fixture()`.
    """

    @pytest.fixture(scope=scope)
    def _fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        binary = require_redis_server()
        server = RedisServer(tmp_path_factory.mktemp("redis"), password=password, binary=binary)
        try:
            server.start()
        except RedisServerError as exc:
            server.stop()
            unavailable(f"cannot start redis-server ({exc}): is it installed? apt-get install redis-server")
        try:
            yield server
        finally:
            server.stop()

    return _fixture
