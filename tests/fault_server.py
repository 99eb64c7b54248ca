"""A real loopback HTTP/1.1 server that misbehaves on cue: scripted faults for routing tests.

Each named backend gets its own port on 127.0.0.1 and speaks OpenAI's `POST /v1/chat/completions`,
streamed (SSE over chunked transfer encoding, `data: {...}\\n\\n`, a usage chunk when
`stream_options.include_usage`, `data: [DONE]\\n\\n`) and not. What it does with each request is
decided by the backend's *script*:

- one behaviour: every request gets it;
- a list of behaviours: consumed one per request, the last one repeating;
- a function `(n, t, body) -> behaviour` of the request number (0-based, per backend), the
  seconds since the script was set and the request JSON (see `down_for`).

Behaviours are small frozen dataclasses made by the factories below (`ok`, `status`,
`reset_before_headers`, `silent`, `slow_first_token`, `cut_after`, `stall_after`,
`malformed_after`, `no_done`, `context_400`, `content_filter_400`, `rejects_prefill`,
`continues_prefill`). A new one subclasses `Behaviour` (or `Ok`, overriding its hooks) and
implements `serve(exchange)`; `Exchange` has the helpers to answer.

The server runs its own asyncio loop in a daemon thread, so it serves sync and async tests
alike and never blocks the router's loop (it does share the process, and so the GIL: under
thousands of concurrent requests both sides slow down together). It records every chat request per backend
(`requests(name)`: time, body, stream flag, the behaviour served), and tracks open and busy
connections so a test can check no socket is left behind (`wait_closed`). Everything is
bounded: a behaviour holds a connection at most `max_hold_s`, request heads and bodies have
size limits, and `close()` cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Behaviour",
    "Exchange",
    "FaultServer",
    "Request",
    "Script",
    "content_filter_400",
    "context_400",
    "continues_prefill",
    "cut_after",
    "down_for",
    "malformed_after",
    "no_done",
    "ok",
    "rejects_prefill",
    "reset_before_headers",
    "silent",
    "slow_first_token",
    "stall_after",
    "status",
    "tokens",
]

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


def tokens(text: str) -> list[str]:
    """How the server splits an answer into streamed tokens: words, each with its leading space."""
    return re.findall(r"\s*\S+", text) or [text]


# --- what the server saw ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One chat-completions request a backend received."""

    backend: str
    n: int
    """0-based request number for this backend (since its script was set)."""
    at: float
    """Seconds since the backend's script was set (time.monotonic clock)."""
    path: str
    headers: dict[str, str]
    body: Any
    stream: bool
    behaviour: str
    """repr of the behaviour that answered it."""

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[Any]:
        found = self.body.get("messages") if isinstance(self.body, dict) else None
        return found if isinstance(found, list) else []


# --- the exchange: one request and the means to answer it ---------------------------------


class Exchange:
    """One request on one connection, with the helpers behaviours answer through."""

    def __init__(self, request: Request, writer: asyncio.StreamWriter, max_hold_s: float) -> None:
        self.request = request
        self.body: dict[str, Any] = request.body if isinstance(request.body, dict) else {}
        self.stream = request.stream
        options = self.body.get("stream_options") or {}
        self.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        self.model = str(self.body.get("model") or "unknown")
        self.id = f"chatcmpl-{request.backend}-{request.n}"
        self.keep_alive = True
        """False once the behaviour has closed or spoiled the connection."""
        self._writer = writer
        self.max_hold_s = max_hold_s
        self._chunked = False

    # raw HTTP -------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def head(self, status: int, headers: dict[str, str]) -> bytes:
        reason = _REASONS.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", f"x-request-id: {self.id}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """A complete response with a JSON body (Content-Length framed; the connection stays usable)."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        hdrs = {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})}
        await self.write(self.head(status, hdrs) + data)

    async def start_body(self, status: int, headers: dict[str, str]) -> None:
        """Status line and headers of a response whose body follows in chunks (`raw`, `end_body`)."""
        self._chunked = True
        await self.write(self.head(status, {**headers, "transfer-encoding": "chunked"}))

    async def start_sse(self, headers: dict[str, str] | None = None) -> None:
        """Status line and headers of a 200 event stream, body chunked."""
        hdrs = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", **(headers or {})}
        await self.start_body(200, hdrs)

    async def raw(self, data: bytes) -> None:
        """Bytes of the (chunked) body, framed as one HTTP chunk."""
        if self._chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        await self.write(data)

    async def event(self, payload: dict[str, Any] | str | bytes) -> None:
        """One SSE `data:` event."""
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        if isinstance(payload, str):
            payload = payload.encode()
        await self.raw(b"data: " + payload + b"\n\n")

    async def done(self) -> None:
        """`data: [DONE]` and the end of the chunked body: the response is complete."""
        await self.raw(b"data: [DONE]\n\n")
        await self.end_body()

    async def end_body(self) -> None:
        if self._chunked:
            await self.write(b"0\r\n\r\n")
            self._chunked = False

    def abort(self, *, rst: bool = False) -> None:
        """Close the connection now; with `rst`, a TCP reset instead of an orderly FIN."""
        self.keep_alive = False
        transport = self._writer.transport
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    # time -----------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(min(seconds, self.max_hold_s))

    async def hold(self, seconds: float | None = None) -> None:
        """Keep the connection open, answering nothing, until the client leaves (or the bound)."""
        self.keep_alive = False
        await asyncio.sleep(min(seconds if seconds is not None else self.max_hold_s, self.max_hold_s))

    # OpenAI payloads ------------------------------------------------------------------

    def chunk(
        self, content: str | None = None, *, role: str | None = None, finish: str | None = None
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if role is not None:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            data["usage"] = None  # as OpenAI does on every chunk but the last
        return data

    def usage(self, completion_tokens: int, override: tuple[int, int] | None = None) -> dict[str, int]:
        if override is not None:
            prompt, completion = override
        else:
            chars = sum(len(str(m.get("content") or "")) for m in self.request.messages if isinstance(m, dict))
            prompt, completion = max(1, chars // 4), completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }

    def completion(self, text: str, usage: dict[str, int], finish: str = "stop") -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# --- behaviours ---------------------------------------------------------------------------


class Behaviour:
    """What a backend does with one request. Subclasses are frozen dataclasses."""

    async def serve(self, x: Exchange) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Ok(Behaviour):
    """A faithful answer. Streamed: headers and the role chunk at once, the first token after
    `ttft`, then one token per 1/`tps` s, the finish chunk, usage (if asked) and `[DONE]`.
    Not streamed: the whole JSON after `ttft` (+ the decode time at `tps`)."""

    text: str = DEFAULT_TEXT
    ttft: float = 0.0
    tps: float | None = None
    usage: tuple[int, int] | None = None
    """(prompt, completion) tokens to report; default: prompt chars / 4 and the token count."""
    finish_reason: str = "stop"

    async def serve(self, x: Exchange) -> None:
        toks = tokens(self.text)
        usage = x.usage(len(toks), self.usage)
        if not x.stream:
            decode = (len(toks) - 1) / self.tps if self.tps else 0.0
            await x.sleep(self.ttft + decode)
            await self.complete(x, usage)
            return
        await x.start_sse()
        await x.event(x.chunk("", role="assistant"))
        await x.sleep(self.ttft)
        for i, tok in enumerate(toks):
            if not await self.before_token(x, i):
                return
            if i and self.tps:
                await x.sleep(1.0 / self.tps)
            await x.event(x.chunk(tok))
        if not await self.before_token(x, len(toks)):
            return
        await x.event(x.chunk(finish=self.finish_reason))
        if x.include_usage:
            await x.event(x.usage_chunk(usage))
        await self.end(x)

    async def complete(self, x: Exchange, usage: dict[str, int]) -> None:
        await x.send_json(200, x.completion(self.text, usage, self.finish_reason))

    async def before_token(self, x: Exchange, i: int) -> bool:
        """Hook before streamed token `i` (and once more, with i == len(tokens), before the finish
        chunk); False stops the stream there."""
        return True

    async def end(self, x: Exchange) -> None:
        await x.done()


@dataclass(frozen=True)
class CutAfter(Ok):
    """Stream `n_tokens` tokens, then close the connection: no finish, no `[DONE]`, no chunked end.
    Not streamed: headers announcing the full length, half the body, then the close."""

    n_tokens: int = 2
    rst: bool = False

    async def before_token(self, x: Exchange, i: int) -> bool:
        if i < self.n_tokens:
            return True
        x.abort(rst=self.rst)
        return False

    async def complete(self, x: Exchange, usage: dict[str, int]) -> None:
        data = json.dumps(x.completion(self.text, usage)).encode()
        await x.write(x.head(200, {"content-type": "application/json", "content-length": str(len(data))}))
        await x.write(data[: len(data) // 2])
        x.abort(rst=self.rst)


@dataclass(frozen=True)
class StallAfter(Ok):
    """Stream `n_tokens` tokens, go quiet for `seconds` (sending only `: keep-alive` comments every
    `keepalive_every` s, if set), then finish normally. Not streamed: the headers at once, then
    `seconds` of nothing (or of blank lines every `keepalive_every` s, as DeepSeek sends while a
    request is queued), then the JSON body."""

    n_tokens: int = 2
    seconds: float = 10.0
    keepalive_every: float | None = None

    async def before_token(self, x: Exchange, i: int) -> bool:
        if i == self.n_tokens:
            await _quiet(x, self.seconds, self.keepalive_every)
        return True

    async def complete(self, x: Exchange, usage: dict[str, int]) -> None:
        await x.start_body(200, {"content-type": "application/json"})
        await _quiet(x, self.seconds, self.keepalive_every, b"\n")
        await x.raw(json.dumps(x.completion(self.text, usage, self.finish_reason)).encode())
        await x.end_body()


@dataclass(frozen=True)
class MalformedAfter(Ok):
    """Stream `n_tokens` tokens, then a data event that is not JSON, then carry on normally.
    Not streamed: a 200 whose body is truncated JSON."""

    n_tokens: int = 2
    payload: bytes = b'{"id": "chatcmpl-broken", "choices": [{"delta": {"content": "oops'

    async def before_token(self, x: Exchange, i: int) -> bool:
        if i == self.n_tokens:
            await x.event(self.payload)
        return True

    async def complete(self, x: Exchange, usage: dict[str, int]) -> None:
        await x.send_json(200, self.payload)


@dataclass(frozen=True)
class NoDone(Ok):
    """A complete stream — every token, finish_reason, usage — then silence: no `[DONE]`, no end
    of the chunked body, the connection held open for `hold_s`. Not streamed: a normal answer."""

    hold_s: float = 10.0

    async def end(self, x: Exchange) -> None:
        await x.hold(self.hold_s)
        x.abort()


@dataclass(frozen=True)
class Status(Behaviour):
    """An HTTP error status with an OpenAI-style JSON body (a realistic default per status)."""

    code: int = 500
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()

    async def serve(self, x: Exchange) -> None:
        headers = dict(self.headers)
        if self.retry_after is not None:
            value = self.retry_after
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            headers["retry-after"] = str(value)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        body = self.body if self.body is not None else _default_error_body(self.code)
        await x.send_json(self.code, body, headers)


def _default_error_body(code: int) -> dict[str, Any]:
    if code == 429:  # Groq/OpenAI shape, without a "try again in" (that would be a retry hint)
        return _error("Rate limit reached for requests per minute (RPM): Limit 30, Used 30, Requested 1.",
                      "requests", "rate_limit_exceeded")  # fmt: skip
    if code == 503:  # vLLM's admission control
        return _error(
            "The engine is currently busy and cannot accept new requests. "
            "Please try again later or on a different instance.",
            "ServiceUnavailableError",
            503,
        )
    if code >= 500:
        return _error("The server had an error while processing your request.", "server_error", None)
    return _error(f"HTTP {code}", "invalid_request_error", None)


def _error(message: str, type_: str | None, code: Any, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


CONTEXT_BODY = _error(
    "This model's maximum context length is 8192 tokens. However, you requested 9500 tokens "
    "(8500 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.",
    "invalid_request_error",
    "context_length_exceeded",
    "messages",
)
CONTENT_FILTER_BODY = _error(
    "The response was filtered due to the prompt triggering the content management policy.",
    "invalid_request_error",
    "content_filter",
    "prompt",
)
PREFILL_BODY = _error(
    "Assistant message prefill is not supported: the last message must have role 'user' or 'tool'.",
    "invalid_request_error",
    None,
    "messages",
)


@dataclass(frozen=True)
class ResetBeforeHeaders(Behaviour):
    """Read the request, then close the socket without a byte of response (RST by default)."""

    rst: bool = True

    async def serve(self, x: Exchange) -> None:
        x.abort(rst=self.rst)


@dataclass(frozen=True)
class Silent(Behaviour):
    """Accept the request and never answer; the connection stays open until the client leaves."""

    hold_s: float | None = None

    async def serve(self, x: Exchange) -> None:
        await x.hold(self.hold_s)
        x.abort()


@dataclass(frozen=True)
class RejectsPrefill(Behaviour):
    """400 when the last message is the assistant's (a prefill); otherwise behave as `then`."""

    then: Behaviour = field(default_factory=Ok)

    async def serve(self, x: Exchange) -> None:
        messages = x.request.messages
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            await x.send_json(400, PREFILL_BODY)
        else:
            await self.then.serve(x)


@dataclass(frozen=True)
class ContinuesPrefill(Behaviour):
    """Continue a trailing assistant message instead of answering anew (vLLM `continue_final_message`,
    DeepSeek prefix completion, llama.cpp): answer the rest of `text` after that prefix (all of `text`
    if it isn't one). With `flag`, only a request whose body sets that field true is continued; other
    requests, and those without a prefill, get `text` as `ok` would answer it."""

    text: str = DEFAULT_TEXT
    flag: str | None = None

    async def serve(self, x: Exchange) -> None:
        messages = x.request.messages
        last = messages[-1] if messages else None
        asked = self.flag is None or bool(x.body.get(self.flag))
        if isinstance(last, dict) and last.get("role") == "assistant" and asked:
            prefix = str(last.get("content") or "")
            rest = self.text[len(prefix) :] if self.text.startswith(prefix) else self.text
            await Ok(rest).serve(x)
        else:
            await Ok(self.text).serve(x)


async def _quiet(
    x: Exchange, seconds: float, keepalive_every: float | None, keepalive: bytes = b": keep-alive\n\n"
) -> None:
    """Send nothing but `keepalive` (every `keepalive_every` s, if set) for `seconds`."""
    if not keepalive_every:
        await x.sleep(seconds)
        return
    end = time.monotonic() + min(seconds, x.max_hold_s)
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(keepalive_every, left))
        if time.monotonic() < end:
            await x.raw(keepalive)


# factories: the vocabulary tests use ------------------------------------------------------


def ok(
    text: str = DEFAULT_TEXT, ttft: float = 0.0, tps: float | None = None, *, usage: tuple[int, int] | None = None
) -> Ok:
    return Ok(text, ttft, tps, usage)


def status(
    code: int,
    retry_after: float | str | None = None,
    retry_after_ms: float | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Status:
    return Status(code, retry_after, retry_after_ms, body, tuple((headers or {}).items()))


def reset_before_headers(*, rst: bool = True) -> ResetBeforeHeaders:
    return ResetBeforeHeaders(rst)


def silent(hold_s: float | None = None) -> Silent:
    return Silent(hold_s)


def slow_first_token(seconds: float, text: str = DEFAULT_TEXT) -> Ok:
    return Ok(text, ttft=seconds)


def cut_after(n_tokens: int, text: str = DEFAULT_TEXT, *, rst: bool = False) -> CutAfter:
    return CutAfter(text, n_tokens=n_tokens, rst=rst)


def stall_after(
    n_tokens: int, seconds: float, text: str = DEFAULT_TEXT, *, keepalive_every: float | None = None
) -> StallAfter:
    return StallAfter(text, n_tokens=n_tokens, seconds=seconds, keepalive_every=keepalive_every)


def malformed_after(n_tokens: int, text: str = DEFAULT_TEXT) -> MalformedAfter:
    return MalformedAfter(text, n_tokens=n_tokens)


def no_done(text: str = DEFAULT_TEXT, *, hold_s: float = 10.0, usage: tuple[int, int] | None = None) -> NoDone:
    return NoDone(text, usage=usage, hold_s=hold_s)


def context_400() -> Status:
    return Status(400, body=CONTEXT_BODY)


def content_filter_400() -> Status:
    return Status(400, body=CONTENT_FILTER_BODY)


def rejects_prefill(then: Behaviour | None = None) -> RejectsPrefill:
    return RejectsPrefill(then if then is not None else Ok())


ScriptFn = Callable[[int, float, Any], Behaviour]
Script = Behaviour | Sequence[Behaviour] | ScriptFn


def continues_prefill(text: str = DEFAULT_TEXT, *, flag: str | None = None) -> ContinuesPrefill:
    return ContinuesPrefill(text, flag)


def down_for(seconds: float, down: Behaviour | None = None, then: Behaviour | None = None) -> ScriptFn:
    """A script: `down` (default 503) for the first `seconds` after it is set, `then` (default ok) after."""
    down_b = down if down is not None else status(503)
    then_b = then if then is not None else ok()
    return lambda n, t, body: down_b if t < seconds else then_b


# --- the server ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    backend: str
    busy: bool = False


@dataclass(eq=False)
class _Backend:
    name: str
    script: Script
    epoch: float
    server: asyncio.Server | None = None
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    conns: set[_Conn] = field(default_factory=set)
    accepted: int = 0

    def pick(self, n: int, t: float, body: Any) -> Behaviour:
        script = self.script
        if isinstance(script, Behaviour):
            return script
        if callable(script):
            return script(n, t, body)
        if not script:
            return status(500, body=_error(f"{self.name}: empty script", "server_error", None))
        return script[min(n, len(script) - 1)]


class FaultServer:
    """Scripted OpenAI-compatible backends on loopback ports, served from a background thread.

    Use as a context manager (`with FaultServer(a=ok(), b=[status(500), ok()]) as server:`), or
    call `close()`. `base_url(name)` is the backend's `http://127.0.0.1:PORT/v1`.
    """

    def __init__(self, *, max_hold_s: float = 30.0, **scripts: Script) -> None:
        self.max_hold_s = max_hold_s
        self.errors: list[str] = []
        """Unexpected exceptions inside the server (a test may assert this stays empty)."""
        self._lock = threading.Lock()
        self._backends: dict[str, _Backend] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._thread.start()
        self._closed = False
        for name, script in scripts.items():
            self.add(name, script)

    # control, from any thread ---------------------------------------------------------

    def _run(self, coro: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, name: str, script: Script) -> str:
        """Start a backend on a fresh loopback port; returns its base URL."""
        if name in self._backends:
            raise ValueError(f"backend {name!r} already exists")
        backend = _Backend(name, script, time.monotonic())

        async def start() -> None:
            backend.server = await asyncio.start_server(
                lambda r, w: self._connection(backend, r, w), host="127.0.0.1", port=0, backlog=1024
            )
            backend.port = backend.server.sockets[0].getsockname()[1]

        self._run(start())
        with self._lock:
            self._backends[name] = backend
        return self.base_url(name)

    def script(self, name: str, script: Script) -> None:
        """Replace a backend's script; its request log, counter and clock start again."""
        backend = self._backends[name]
        with self._lock:
            backend.script = script
            backend.epoch = time.monotonic()
            backend.requests = []

    def base_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._backends[name].port}/v1"

    @property
    def names(self) -> list[str]:
        return list(self._backends)

    def now(self, name: str) -> float:
        """Seconds on the backend's clock (the one `Request.at` and script functions use)."""
        return time.monotonic() - self._backends[name].epoch

    def requests(self, name: str) -> list[Request]:
        """Every chat request the backend received, in arrival order."""
        with self._lock:
            return list(self._backends[name].requests)

    def count(self, name: str) -> int:
        return len(self.requests(name))

    def other_requests(self, name: str) -> list[tuple[str, str]]:
        """(method, path) of requests other than chat completions (answered 404 or /models)."""
        with self._lock:
            return list(self._backends[name].other)

    def open_connections(self, name: str | None = None) -> int:
        """Connections currently open (idle keep-alive ones included)."""
        with self._lock:
            return sum(len(b.conns) for b in self._backends.values() if name is None or b.name == name)

    def busy_connections(self, name: str | None = None) -> int:
        """Connections whose request is still being answered (a stall, a silence, a held stream)."""
        with self._lock:
            return sum(
                sum(1 for c in b.conns if c.busy) for b in self._backends.values() if name is None or b.name == name
            )

    def accepted(self, name: str) -> int:
        """Connections ever accepted by the backend."""
        return self._backends[name].accepted

    def wait_closed(self, name: str | None = None, *, timeout: float = 1.0, busy_only: bool = False) -> bool:
        """Block until no connection (or, with `busy_only`, no busy one) is open; False on timeout."""
        count = self.busy_connections if busy_only else self.open_connections
        end = time.monotonic() + timeout
        while count(name):
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)
        return True

    async def await_closed(self, name: str | None = None, *, timeout: float = 1.0, busy_only: bool = False) -> bool:
        """`wait_closed` for async tests: yields to the caller's loop while waiting."""
        count = self.busy_connections if busy_only else self.open_connections
        end = time.monotonic() + timeout
        while count(name):
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop listening, cancel every connection, stop the loop and join the thread."""
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            for backend in self._backends.values():
                if backend.server is not None:
                    backend.server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)
            for backend in self._backends.values():
                if backend.server is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(backend.server.wait_closed(), 1.0)

        try:
            self._run(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the loop side --------------------------------------------------------------------

    async def _connection(self, backend: _Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(backend.name)
        with self._lock:
            backend.conns.add(conn)
            backend.accepted += 1
        buffer = bytearray()
        try:
            while True:
                parsed = await self._read_request(reader, buffer)
                if parsed is None:
                    break
                method, path, headers, raw = parsed
                if not (method == "POST" and path.rstrip("/").endswith("/chat/completions")):
                    with self._lock:
                        backend.other.append((method, path))
                    writer.write(_plain(404, {"error": {"message": f"no route {method} {path}"}}))
                    await writer.drain()
                    continue
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                stream = bool(isinstance(body, dict) and body.get("stream"))
                with self._lock:
                    n = len(backend.requests)
                    at = time.monotonic() - backend.epoch
                    behaviour = backend.pick(n, at, body)
                    request = Request(backend.name, n, at, path, headers, body, stream, repr(behaviour))
                    backend.requests.append(request)
                exchange = Exchange(request, writer, self.max_hold_s)
                conn.busy = True
                try:
                    if not await self._serve(behaviour, exchange, reader, buffer):
                        break
                finally:
                    conn.busy = False
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # close() cancels us; ending quietly keeps asyncio's stream callback from logging it
        except Exception as exc:  # a bug in a behaviour: keep it for the test to see
            self.errors.append(f"{backend.name}: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                backend.conns.discard(conn)
            self._tasks.discard(task)
            if writer.transport.is_closing():
                writer.transport.abort()
            else:
                writer.close()

    async def _serve(self, behaviour: Behaviour, x: Exchange, reader: asyncio.StreamReader, buffer: bytearray) -> bool:
        """Run the behaviour while watching for the client to leave; True if the connection is reusable."""
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    gone.set()
                    return
                buffer.extend(data)  # a pipelined next request; kept for the next parse

        serving = asyncio.ensure_future(behaviour.serve(x))
        watching = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, watching):
                task.cancel()
            results = await asyncio.gather(serving, watching, return_exceptions=True)
        if gone.is_set():
            return False
        error = results[0]
        if isinstance(error, (ConnectionError, asyncio.CancelledError)):
            return False
        if isinstance(error, BaseException):
            raise error
        return x.keep_alive and not x._writer.transport.is_closing()

    async def _read_request(
        self, reader: asyncio.StreamReader, buffer: bytearray
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD:
                raise ConnectionError("request head too large")
            data = await reader.read(65536)
            if not data:
                return None
            buffer.extend(data)
        end = buffer.index(b"\r\n\r\n")
        head = bytes(buffer[:end]).decode("latin-1")
        del buffer[: end + 4]
        request_line, *lines = head.split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY or "chunked" in headers.get("transfer-encoding", ""):
            raise ConnectionError("request body too large or chunked")
        while len(buffer) < length:
            data = await reader.read(65536)
            if not data:
                return None
            buffer.extend(data)
        raw = bytes(buffer[:length])
        del buffer[:length]
        return method, path, headers, raw


def _plain(status_code: int, payload: Any) -> bytes:
    data = json.dumps(payload).encode()
    reason = _REASONS.get(status_code, "Status")
    head = f"HTTP/1.1 {status_code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    return head.encode() + data
