"""A simulated fleet of OpenAI-compatible backends on loopback, for routing-policy benchmarks.

One OS process (plain asyncio, HTTP/1.1 keep-alive) hosts N simulated backends on N ports.
Each backend has:

* `ttft_s`        time to first token once the request holds a slot (± `jitter`, relative);
* `tokens_per_s`  decode speed: tokens are paced with `asyncio.sleep`, several per write at
                  most every `TICK_S` so that the CPU per request stays tiny;
* `capacity`      concurrent slots; requests beyond it queue FIFO (the wait counts as TTFT);
* `error_rate`    share of requests answered at once with `error_status` (503 or 500);
* `slow_at_s`, `slow_factor`  from `slow_at_s` seconds after the start signal, requests
                  that get a slot have TTFT × factor and tokens/s ÷ factor;
* `slow_until_s`  ... until this many seconds after the start signal (None: for good).

Endpoints, on every port:

* `POST /v1/chat/completions`  stream (role chunk at once, one SSE chunk per token, finish
  chunk, a usage chunk when `stream_options.include_usage`, `[DONE]`) or not (one completion
  after TTFT + tokens ÷ tokens/s); `max_tokens` (or `max_completion_tokens`) tokens, default 16;
  `prompt_tokens` ≈ prompt characters ÷ 4 + 4 per message;
* `GET /metrics`  vLLM's Prometheus names for *this* backend (`vllm:num_requests_running`,
  `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`), so `provider: vllm` gets server load;
* `GET /stats`  JSON counters of every backend since the last start signal;
* `POST /control/start`  the start signal for the whole fleet: resets the slow-down clock, the
  counters and the random generator (JSON body `{"seed": n}` optional).

Run it:    python bench/sim_fleet.py --backend 'fast:ttft=0.05,tps=400,cap=16' --backend 'slow:ttft=0.3,tps=100,cap=32'
           (prints `READY name=port ...`; `--spec FILE` reads a JSON list of backend objects instead)
Import it: with fleet_process([SimBackend(...), ...]) as fleet: fleet.ports["fast"]; fleet.start()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODEL = "sim"
CREATED = 1_700_000_000
TICK_S = 0.02
"""At most one token write per stream per this many seconds (the due tokens go out together)."""
TOKEN_TEXT = " tok"


@dataclass(frozen=True)
class SimBackend:
    """One simulated backend (times in seconds, relative to the fleet's start signal)."""

    name: str
    ttft_s: float = 0.1
    tokens_per_s: float = 200.0
    capacity: int = 16
    error_rate: float = 0.0
    error_status: int = 503
    jitter: float = 0.1
    slow_at_s: float | None = None
    slow_factor: float = 1.0
    slow_until_s: float | None = None

    def slowed_at(self, elapsed_s: float) -> bool:
        """Whether a request that gets a slot `elapsed_s` after the start signal is slowed."""
        if self.slow_at_s is None or elapsed_s < self.slow_at_s:
            return False
        return self.slow_until_s is None or elapsed_s < self.slow_until_s

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.tokens_per_s <= 0 or self.capacity < 1:
            raise ValueError(f"{self.name}: need ttft_s >= 0, tokens_per_s > 0, capacity >= 1")
        if not 0.0 <= self.error_rate <= 1.0 or not 0.0 <= self.jitter < 1.0 or self.slow_factor <= 0:
            raise ValueError(f"{self.name}: need 0 <= error_rate <= 1, 0 <= jitter < 1, slow_factor > 0")


_SHORT = {
    "ttft": "ttft_s", "tps": "tokens_per_s", "cap": "capacity", "err": "error_rate", "status": "error_status",
    "slow_at": "slow_at_s", "slow_x": "slow_factor", "slow_until": "slow_until_s",
}  # fmt: skip


def parse_backend(text: str) -> tuple[SimBackend, dict[str, str]]:
    """`name:ttft=0.1,tps=200,cap=16,err=0.05,status=500,jitter=0.1,slow_at=15,slow_x=4,slow_until=20` →
    (backend, the key=value pairs that are not backend fields, for the caller's own use)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"backend spec {text!r}: no name")
    known = {f.name: f.type for f in fields(SimBackend)}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"backend spec {text!r}: {part!r} is not key=value")
        key = _SHORT.get(key.strip(), key.strip())
        if key not in known or key == "name":
            extra[key] = value.strip()
        elif key in ("capacity", "error_status"):
            values[key] = int(value)
        else:
            values[key] = float(value)
    return SimBackend(name=name, **values), extra


# --- precomputed bytes ---------------------------------------------------------------------


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk_frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def _sse(obj: object) -> bytes:
    return _chunk_frame(b"data: " + _dumps(obj) + b"\n\n")


def _stream_chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
        "choices": choices,
    }  # fmt: skip
    if usage is not None:
        body["usage"] = usage
    return body


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


_SERVER = b"server: sim-fleet\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n" + _SERVER + b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    + _sse(_stream_chunk([_choice({"role": "assistant", "content": ""})]))
)
TOKEN = _sse(_stream_chunk([_choice({"content": TOKEN_TEXT})]))
FINISH = _sse(_stream_chunk([_choice({}, "stop")]))
DONE = _chunk_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _plain(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error",
              503: b"Service Unavailable"}.get(status, b"Error")  # fmt: skip
    return (
        b"HTTP/1.1 %d " % status
        + reason
        + b"\r\n"
        + _SERVER
        + b"content-type: "
        + content_type
        + b"\r\ncontent-length: %d\r\n\r\n" % len(body)
        + body
    )


def _error(status: int, message: str) -> bytes:
    kind = "ServiceUnavailableError" if status == 503 else "InternalServerError"
    return _plain(status, _dumps({"error": {"message": message, "type": kind, "code": status}}))


NOT_FOUND = _error(404, "not found")


# --- the fleet -----------------------------------------------------------------------------


@dataclass
class _State:
    """One backend's live state and counters."""

    spec: SimBackend
    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    requests: int = 0
    errors: int = 0
    served: int = 0
    cancelled: int = 0
    tokens: int = 0
    slowed: int = 0
    max_running: int = 0
    max_waiting: int = 0
    connections: int = 0

    def reset(self) -> None:
        self.requests = self.errors = self.served = self.cancelled = self.tokens = self.slowed = 0
        self.max_running = self.max_waiting = self.connections = 0

    def counters(self) -> dict[str, int]:
        return {
            "requests": self.requests, "errors": self.errors, "served": self.served, "cancelled": self.cancelled,
            "slowed": self.slowed, "tokens": self.tokens, "running": self.running, "waiting": len(self.waiting),
            "max_running": self.max_running, "max_waiting": self.max_waiting, "connections": self.connections,
        }  # fmt: skip

    async def acquire(self) -> None:
        """Take a slot, waiting FIFO behind earlier requests when all are busy."""
        if self.running < self.spec.capacity and not self.waiting:
            self.running += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            self.max_waiting = max(self.max_waiting, len(self.waiting))
            try:
                await waiter  # the slot is handed over by `release`: `running` is unchanged
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release()  # handed a slot just as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self.waiting.remove(waiter)
                raise
        self.max_running = max(self.max_running, self.running)

    def release(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    def metrics(self) -> bytes:
        running, waiting = self.running, len(self.waiting)
        label = f'{{model_name="{MODEL}",engine="0"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} {float(waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{label} {running / self.spec.capacity}\n"
        )
        return _plain(200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")


class Fleet:
    """Every backend's state, one shared start clock and random generator."""

    def __init__(self, backends: Sequence[SimBackend], seed: int = 0) -> None:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {names}")
        self.states = [_State(b) for b in backends]
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(seed)
        self.t0 = self.loop.time()
        self.starts = 0

    def start(self, seed: int | None = None) -> dict[str, Any]:
        """The start signal: the slow-down clock, counters and random draws begin again."""
        self.t0 = self.loop.time()
        self.starts += 1
        if seed is not None:
            self.rng.seed(seed)
        for state in self.states:
            state.reset()
        return {"starts": self.starts, "busy": sum(s.running + len(s.waiting) for s in self.states)}

    def stats(self) -> bytes:
        return _plain(200, _dumps({
            "elapsed_s": self.loop.time() - self.t0,
            "backends": {s.spec.name: s.counters() for s in self.states},
        }))  # fmt: skip

    async def handle(self, state: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: requests one after another until the client closes."""
        state.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) < 3:
                    writer.write(_error(400, "bad request line"))
                    return
                method, path = parts[0], parts[1].split(b"?", 1)[0]
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
                if method == b"POST" and path.endswith(b"/chat/completions"):
                    if not await self.chat(state, body, writer):
                        return
                elif path == b"/metrics":
                    writer.write(state.metrics())
                elif path == b"/stats":
                    writer.write(self.stats())
                elif method == b"POST" and path == b"/control/start":
                    seed = None
                    if body.strip():
                        with contextlib.suppress(ValueError, AttributeError):
                            seed = json.loads(body).get("seed")
                    writer.write(_plain(200, _dumps(self.start(seed))))
                elif path in (b"/health", b"/v1/models"):
                    writer.write(_plain(200, _dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})))
                else:
                    writer.write(NOT_FOUND)
                if close:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def chat(self, state: _State, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Serve one chat completion; False when the connection is gone."""
        spec = state.spec
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            writer.write(_error(400, "body is not a JSON object"))
            return True
        state.requests += 1
        rng = self.rng
        if spec.error_rate and rng.random() < spec.error_rate:
            state.errors += 1
            writer.write(_error(spec.error_status, "simulated failure"))
            return True
        n = request.get("max_completion_tokens") or request.get("max_tokens") or 16
        n = max(1, int(n))
        messages = request.get("messages") or []
        chars = sum(
            len(m.get("content") or "") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        prompt = chars // 4 + 4 * len(messages)
        stream = request.get("stream") is True
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if stream:
            writer.write(STREAM_HEAD)  # headers and the role chunk at once, as vLLM does
        await state.acquire()
        loop = self.loop
        try:
            factor = 1.0
            if spec.slowed_at(loop.time() - self.t0):
                factor = spec.slow_factor
                state.slowed += 1
            ttft = spec.ttft_s * factor * (1.0 + spec.jitter * (2.0 * rng.random() - 1.0))
            tps = spec.tokens_per_s / factor
            await asyncio.sleep(ttft)
            if not stream:
                await asyncio.sleep(n / tps)
                if writer.is_closing():
                    state.cancelled += 1
                    return False
                writer.write(_plain(200, _dumps({
                    "id": "chatcmpl-sim", "object": "chat.completion", "created": CREATED, "model": MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": TOKEN_TEXT * n},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": _usage(prompt, n),
                })))  # fmt: skip
            else:
                # token k (0-based) is due at first + k / tps; each wake-up writes all that are due
                first = loop.time()
                sent = 0
                while True:
                    if writer.is_closing():
                        state.cancelled += 1
                        return False
                    due = min(n, 1 + int((loop.time() - first) * tps))
                    if due > sent:
                        writer.write(TOKEN * (due - sent))
                        sent = due
                    if sent >= n:
                        break
                    wait = first + sent / tps - loop.time()
                    await asyncio.sleep(wait if wait > TICK_S else TICK_S)
                tail = FINISH + (_sse(_stream_chunk([], _usage(prompt, n))) if include_usage else b"") + DONE
                writer.write(tail)
            state.served += 1
            state.tokens += n
            return True
        finally:
            state.release()


async def serve(
    backends: Sequence[SimBackend],
    ports: Sequence[int] | None = None,
    host: str = "127.0.0.1",
    *,
    seed: int = 0,
    ready: bool = False,
) -> None:
    """Serve every backend on its port (0 = any free one) until cancelled; with `ready`, print
    `READY name=port ...` once listening."""
    fleet = Fleet(backends, seed)
    servers = []
    for state, port in zip(fleet.states, ports or [0] * len(backends), strict=True):
        server = await asyncio.start_server(
            lambda r, w, s=state: fleet.handle(s, r, w), host, port, backlog=1024, reuse_address=True
        )
        servers.append(server)
    if ready:
        bound = [
            f"{s.spec.name}={srv.sockets[0].getsockname()[1]}" for s, srv in zip(fleet.states, servers, strict=True)
        ]
        print("READY " + " ".join(bound), flush=True)
    try:
        await asyncio.gather(*(s.serve_forever() for s in servers))
    finally:
        for s in servers:
            s.close()


# --- running it in its own process ---------------------------------------------------------


@dataclass
class FleetHandle:
    """A running fleet process: each backend's port, the pid, and the start signal."""

    ports: dict[str, int]
    pid: int
    host: str = "127.0.0.1"

    def base_url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}/v1"

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        port = next(iter(self.ports.values()))
        req = urllib.request.Request(f"http://{self.host}:{port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def start(self, seed: int | None = None) -> dict[str, Any]:
        """Send the start signal (blocking, about a millisecond on loopback)."""
        return self._request("POST", "/control/start", _dumps({"seed": seed}) if seed is not None else b"")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")


@contextlib.contextmanager
def fleet_process(
    backends: Sequence[SimBackend], *, host: str = "127.0.0.1", seed: int = 0, cpu: int | None = None
) -> Iterator[FleetHandle]:
    """Run the fleet in a separate OS process (own interpreter, own GIL); yield its ports and pid."""
    spec = json.dumps([asdict(b) for b in backends])
    cmd = [sys.executable, os.path.abspath(__file__), "--host", host, "--seed", str(seed), "--spec-json", spec]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"sim fleet did not start (got {line!r}, exit code {proc.poll()})")
        ports = {k: int(v) for k, v in (item.split("=", 1) for item in line.split()[1:])}
        yield FleetHandle(ports, proc.pid, host)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="first port (0 = pick free ports)")
    parser.add_argument("--backend", action="append", default=[], help="name:key=value,... (repeatable)")
    parser.add_argument("--spec", type=str, default=None, help="a JSON file: a list of backend objects")
    parser.add_argument("--spec-json", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    raw: list[dict[str, Any]] = []
    if args.spec:
        with open(args.spec, encoding="utf-8") as f:
            raw = json.load(f)
    elif args.spec_json:
        raw = json.loads(args.spec_json)
    backends = [SimBackend(**item) for item in raw] + [parse_backend(text)[0] for text in args.backend]
    if not backends:
        parser.error("give at least one --backend (or --spec)")
    ports = [0] * len(backends) if args.port == 0 else [args.port + i for i in range(len(backends))]

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(backends, ports, args.host, seed=args.seed, ready=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
