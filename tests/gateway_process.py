"""`inference-router serve` as a real process on a free loopback port, for tests and benchmarks.

    with GatewayProcess(config_path, env={"TEAM_KEY": "..."}) as gateway:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="...")
        gateway.terminate()          # SIGTERM by PID: graceful shutdown; returns the exit code

The child gets this checkout first on PYTHONPATH, so it runs the code under test. It is ready
when `/healthz` answers; its output goes to a log file whose tail is in any startup error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx2

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """One gateway process (its uvicorn supervisor when `workers` > 1)."""

    def __init__(
        self, config: Path, *, workers: int = 1, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.config = config
        self.workers = workers
        self.env = env or {}
        self.log_path = log or config.with_suffix(".gateway.log")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        self.port = free_port()
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "router.cli", "serve", str(self.config), "--port", str(self.port)]
        argv += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM by PID and wait for the exit; SIGKILL if it lingers past `timeout_s`."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.terminate(timeout_s=10.0)
