"""A deliberately fast, fake OpenAI-compatible chat-completions server for benchmarks.

`POST /v1/chat/completions` answers at once with a fixed, precomputed reply:

* non-stream: one JSON `chat.completion`, framed with `content-length`;
* `"stream": true`: a precomputed SSE stream (role chunk, 16 content chunks, finish chunk,
  a usage chunk when `stream_options.include_usage`, then `data: [DONE]`), framed with
  `transfer-encoding: chunked` (one HTTP chunk per SSE event), written in a single write.

Written on a plain asyncio `Protocol` (no framework, no uvloop) with HTTP/1.1 keep-alive and
pipelining, so a Python client is the bottleneck, not this. Nothing is computed per request
beyond finding the header end, the content length and `json.loads` of the (small) body.
`GET /stats` returns `{"requests": n, "connections": n}` so far (a benchmark reads it to see
whether a client reuses its connections).

Run it:       python bench/fake_server.py [--port 8000] [--ports 3]
Import it:    with server_process(ports=3) as server: ...  # a separate OS process; server.ports
              await serve([0, 0, 0])                        # in the current loop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MODEL = "m"
CREATED = 1_700_000_000
COMPLETION_ID = "chatcmpl-bench0000000000000000000000"
WORDS = [
    "The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    " while",
    " the",
    " router",
    " keeps",
    " its",
    " overhead",
    " small.",
]
TEXT = "".join(WORDS)
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": len(WORDS),
    "total_tokens": 12 + len(WORDS),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def completion_json() -> bytes:
    """The fixed non-streamed reply body."""
    return _dumps(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "service_tier": "default",
        }
    )


LONG_CHUNKS = 256
"""A request with `max_tokens: 256` gets a stream of this many content chunks (the chunk-heavy bench)."""


def sse_events(include_usage: bool, words: Sequence[str] = WORDS) -> list[bytes]:
    """The fixed stream as SSE event payloads (`data: ...\\n\\n`), `[DONE]` last."""

    def chunk(
        choices: list[dict[str, Any]], usage: dict[str, Any] | None = None, with_usage: bool = include_usage
    ) -> bytes:
        body: dict[str, Any] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "service_tier": "default",
            "choices": choices,
        }
        if with_usage:
            body["usage"] = usage
        return b"data: " + _dumps(body) + b"\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [chunk([choice({"role": "assistant", "content": "", "refusal": None})])]
    events += [chunk([choice({"content": word})]) for word in words]
    events.append(chunk([choice({}, "stop")]))
    if include_usage:
        events.append(chunk([], USAGE))
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(parts: Sequence[bytes]) -> bytes:
    out = bytearray()
    for part in parts:
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


_COMMON = b"server: fake-openai\r\nx-request-id: req_bench\r\nopenai-processing-ms: 1\r\n"


def _plain(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\n"
        + _COMMON
        + b"content-type: "
        + content_type
        + b"\r\ncontent-length: %d\r\n\r\n" % len(body)
        + body
    )


def _sse(include_usage: bool, words: Sequence[str] = WORDS) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + _COMMON
        + b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
        + b"transfer-encoding: chunked\r\n\r\n"
        + _chunked(sse_events(include_usage, words))
    )


RESP_COMPLETION = _plain(b"200 OK", completion_json())
RESP_STREAM = _sse(include_usage=False)
RESP_STREAM_USAGE = _sse(include_usage=True)
LONG_WORDS = [WORDS[i % len(WORDS)] for i in range(LONG_CHUNKS)]
LONG_TEXT = "".join(LONG_WORDS)
RESP_LONG_STREAM_USAGE = _sse(include_usage=True, words=LONG_WORDS)
RESP_EMBEDDINGS = _plain(
    b"200 OK",
    _dumps(
        {
            "object": "list",
            "model": MODEL,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.01 * i for i in range(64)]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    ),
)
RESP_NOT_FOUND = _plain(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
RESP_BAD_REQUEST = _plain(b"400 Bad Request", b'{"error":{"message":"bad request","type":"invalid_request_error"}}')
RESP_LENGTH_REQUIRED = _plain(b"411 Length Required", b'{"error":{"message":"content-length required"}}')


def response_for(path: bytes, body: bytes, stats: list[int] | None = None) -> bytes:
    """The precomputed response bytes for one request (`GET /stats`: requests and connections so far)."""
    path = path.split(b"?", 1)[0]
    if path == b"/stats" and stats is not None:
        return _plain(b"200 OK", _dumps({"requests": stats[0], "connections": stats[1]}))
    if path == b"/v1/embeddings":
        return RESP_EMBEDDINGS
    if path != b"/v1/chat/completions":
        return RESP_NOT_FOUND
    try:
        request = json.loads(body)
    except ValueError:
        return RESP_BAD_REQUEST
    if not isinstance(request, dict):
        return RESP_BAD_REQUEST
    if request.get("stream") is True:
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return RESP_LONG_STREAM_USAGE if request.get("max_tokens") == LONG_CHUNKS else RESP_STREAM_USAGE
        return RESP_STREAM
    return RESP_COMPLETION


class _HTTP(asyncio.Protocol):
    """Minimal HTTP/1.1: keep-alive, pipelining, content-length request bodies only."""

    __slots__ = ("_buffer", "_delay_s", "_stats", "_transport")

    def __init__(self, stats: list[int], delay_s: float = 0.0) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._stats = stats
        self._delay_s = delay_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats[1] += 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buffer[:end])
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) < 3:
                out.append(RESP_BAD_REQUEST)
                close = True
                break
            length: int | None = 0 if parts[0] in (b"GET", b"HEAD") else None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"transfer-encoding":
                    length = None
            if length is None:
                out.append(RESP_LENGTH_REQUIRED)
                close = True
                break
            total = end + 4 + length
            if len(buffer) < total:
                break
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            self._stats[0] += 1
            out.append(response_for(parts[1], body, self._stats))
            if close:
                break
        if out and self._transport is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            if self._delay_s > 0:  # a backend that takes this long to answer (in order, per connection)
                asyncio.get_running_loop().call_later(self._delay_s, self._write, data, close)
            else:
                self._write(data, close)

    def _write(self, data: bytes, close: bool) -> None:
        if self._transport is not None:
            self._transport.write(data)
            if close:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(ports: Sequence[int], host: str = "127.0.0.1", *, ready: bool = False, delay_s: float = 0.0) -> None:
    """Listen on each port (0 = any free one) until cancelled; with `ready`, print `READY p1 p2 ...`;
    `delay_s` holds every answer back that long."""
    loop = asyncio.get_running_loop()
    stats = [0, 0]  # requests, connections
    servers = []
    for port in ports:
        server = await loop.create_server(lambda: _HTTP(stats, delay_s), host, port, backlog=1024, reuse_address=True)
        servers.append(server)
    bound = [s.sockets[0].getsockname()[1] for s in servers]
    if ready:
        print("READY " + " ".join(map(str, bound)), flush=True)
    try:
        await asyncio.gather(*(s.serve_forever() for s in servers))
    finally:
        for s in servers:
            s.close()
        if ready:
            print(f"served {stats[0]} requests on {stats[1]} connections", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ServerHandle:
    """A running server process: its ports and pid."""

    ports: list[int]
    pid: int


@contextlib.contextmanager
def server_process(
    ports: int = 1, *, host: str = "127.0.0.1", cpu: int | None = None, delay_ms: float = 0.0
) -> Iterator[ServerHandle]:
    """Run the server in a separate OS process (own interpreter, own GIL); yield its ports and pid.

    `cpu` pins the server process to one core (Linux), so client and server don't swap cores.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--host", host, "--ports", str(ports)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if delay_ms:
        cmd += ["--delay-ms", str(delay_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake server did not start (got {line!r}, exit code {proc.poll()})")
        yield ServerHandle([int(p) for p in line.split()[1:]], proc.pid)
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
    parser.add_argument("--ports", type=int, default=1, help="how many ports to listen on")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer every request after this long")
    args = parser.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    ports = [0] * args.ports if args.port == 0 else [args.port + i for i in range(args.ports)]
    import signal

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(ports, args.host, ready=True, delay_s=args.delay_ms / 1000)

    asyncio.run(run())


if __name__ == "__main__":
    main()
