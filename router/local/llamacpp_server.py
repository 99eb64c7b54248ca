"""Run llama.cpp's OpenAI-compatible server (from the `xllamacpp` wheel) in a separate OS process.

The server runs in its own process so that tests can kill it to simulate a dead backend.
The parent side (`LlamaCppServer`, `free_port`) needs only the stdlib and httpx2; the child side,
``python -m router.local.llamacpp_server --model M --port P``, imports xllamacpp and serves until
it gets SIGTERM or SIGINT (or its parent process goes away).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

import httpx2

__all__ = ["HOST", "LlamaCppServer", "LlamaCppServerError", "free_port", "port_in_use"]

HOST = "127.0.0.1"
API_KEY_ENV = "LLAMACPP_API_KEY"  # the key reaches the child via its environment, not its argv
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `router/`
_CHILD_MODULE = "router.local.llamacpp_server"


class LlamaCppServerError(RuntimeError):
    """The llama.cpp server could not be started (the message carries the log tail)."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port on `host` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = HOST) -> bool:
    """Tell whether something already accepts connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LlamaCppServer:
    """A llama.cpp server child process on 127.0.0.1, started and stopped by PID."""

    def __init__(
        self,
        model: str | Path,
        *,
        port: int | None = None,
        alias: str = "tiny-llama",
        n_parallel: int = 4,
        ctx_per_slot: int = 4096,
        threads: int = 1,
        api_key: str | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        """Configure the server; nothing runs until `start()` (port=None picks a free port now)."""
        if n_parallel < 1 or ctx_per_slot < 1 or threads < 1:
            raise ValueError("n_parallel, ctx_per_slot and threads must be positive")
        self.model = Path(model)
        self.port = free_port() if port is None else port
        self.alias = alias
        self.n_parallel = n_parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        if log_path is None:
            log_dir = Path(tempfile.gettempdir()) / "router-llamacpp"
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"server-{self.port}-{os.getpid()}.log"
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def root_url(self) -> str:
        """Server root, for llama.cpp's own routes (`/health`, `/metrics`, `/slots`)."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, for `openai.OpenAI(base_url=...)`."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        """PID of the server process, or None if it was never started."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The child's command line (the API key, if any, goes through the environment)."""
        return [
            sys.executable, "-m", _CHILD_MODULE,
            "--model", str(self.model),
            "--port", str(self.port),
            "--alias", self.alias,
            "--n-parallel", str(self.n_parallel),
            "--ctx-per-slot", str(self.ctx_per_slot),
            "--threads", str(self.threads),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip

    def start(self) -> Self:
        """Launch the server and wait for `/health` 200; raise LlamaCppServerError if it fails."""
        if self.running:
            raise LlamaCppServerError(f"server already running (pid {self.pid}) on {self.root_url}")
        if not self.model.is_file():
            raise LlamaCppServerError(f"model file not found: {self.model}")
        # Otherwise another process could answer our /health wait.
        if port_in_use(self.port):
            raise LlamaCppServerError(f"port {self.port} on {HOST} is already in use")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        env.pop(API_KEY_ENV, None)
        if self.api_key:
            env[API_KEY_ENV] = self.api_key
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the child's lifetime
        self._log.write(f"--- launching: {' '.join(self.command())}\n".encode())
        self._log.flush()
        # An argv list, no shell: Popen.pid is the server itself, not a wrapping subshell.
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        """Poll `/health` until it is 200, the child dies, or the startup timeout passes."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback traffic.
        with httpx2.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise LlamaCppServerError(
                        f"llama.cpp server exited with code {code} during startup\n" + self.log_tail()
                    )
                try:
                    response = client.get(f"{self.root_url}/health")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx2.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise LlamaCppServerError(
                        f"llama.cpp server on {self.root_url} not healthy after "
                        f"{self.startup_timeout:g} s (last: {last})\n{self.log_tail()}"
                    )
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by PID: SIGTERM, then SIGKILL if it is still alive after `timeout` s."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server, to simulate a crashed backend; the port is closed on return."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        """Close our handle on the log file."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the server log."""
        try:
            with open(self.log_path, "rb") as f:
                tail = deque(f, maxlen=lines)
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"
        text = b"".join(tail).decode("utf-8", "replace")
        return f"--- last {len(tail)} lines of {self.log_path}:\n{text}"

    def __enter__(self) -> Self:
        """Start the server (unless already running) for a `with` block."""
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server when the `with` block ends."""
        self.stop()

    def __repr__(self) -> str:
        """Show where the server listens and whether it runs."""
        state = f"running pid={self.pid}" if self.running else "stopped"
        return f"LlamaCppServer({self.base_url!r}, alias={self.alias!r}, {state})"


# ---------------------------------------------------------------------------------------------
# Child side: runs inside the server process.


def serve(
    model: str | Path,
    *,
    port: int,
    host: str = HOST,
    alias: str = "tiny-llama",
    n_parallel: int = 4,
    ctx_per_slot: int = 4096,
    threads: int = 1,
    api_key: str | None = None,
    parent_pid: int | None = None,
) -> None:
    """Serve `model` with xllamacpp in this process until SIGTERM/SIGINT or the parent's exit."""
    import xllamacpp  # lazy: only the `local` extra ships it

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.hostnames = [host]
    params.port = port
    params.model_alias = {alias}  # a set: a plain str would become a set of its characters
    params.n_parallel = n_parallel
    params.kv_unified = False  # a unified KV cache makes concurrent requests stall ~0.5 s
    params.n_ctx = n_parallel * ctx_per_slot  # total; each slot gets ctx_per_slot
    params.cpuparams.n_threads = threads  # -t 1: more threads only add sync overhead here
    params.cpuparams_batch.n_threads = threads
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.ui = False
    params.warmup = False
    if api_key:
        params.api_keys = [api_key]

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = xllamacpp.Server(params)  # returns once the HTTP listener is up
    print(f"serving {model} as {alias!r} on {server.listening_address}", flush=True)
    while not stopping.wait(0.5):
        if parent_pid is not None and os.getppid() != parent_pid:
            print("parent process is gone; exiting", flush=True)
            break
    print("stopping", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the C++ server's threads are still running and need no cleanup.
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point of the server process."""
    parser = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp (xllamacpp).")
    parser.add_argument("--model", required=True, type=Path, help="path to the .gguf file")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--alias", default="tiny-llama", help="model id reported by /v1/models")
    parser.add_argument("--n-parallel", type=int, default=4, help="slots (concurrent requests)")
    parser.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens per slot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"or ${API_KEY_ENV}")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this parent exits")
    args = parser.parse_args(argv)
    serve(
        args.model,
        port=args.port,
        host=args.host,
        alias=args.alias,
        n_parallel=args.n_parallel,
        ctx_per_slot=args.ctx_per_slot,
        threads=args.threads,
        api_key=args.api_key,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
