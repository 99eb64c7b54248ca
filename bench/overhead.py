"""Client-side overhead of `AsyncRouter` against raw httpx2 and `openai.AsyncOpenAI`.

    python bench/overhead.py [--requests 2000] [--quick] [--rounds 1] [--pin] [--modes stream,parse,...]

Against a local, deliberately fast OpenAI-compatible server (`bench/fake_server.py`, run in its
own OS process), at concurrency 1 and 64, non-streamed and streamed, N requests per cell:
requests/s, p50 and p99 latency for

* raw httpx2    - the same POST with `httpx2.AsyncClient`, body read and `json.loads`-ed
                  (stream: `aiter_lines()`, `json.loads` of every `data:` line): a fair minimal client;
* openai        - `openai.AsyncOpenAI(base_url=..., api_key="x", max_retries=0)`;
* router        - `router.AsyncRouter` with 3 deployments (one per server port).

`--modes parse,embeddings` adds `chat.completions.parse` and `embeddings.create` (openai's own
code, over the router's routing transport for the router; the same POST for raw httpx2).

Each is printed as a ratio to raw httpx2 measured in the same run, then router/openai and the
targets: router throughput at concurrency 64 >= 1.3x openai non-stream and >= 2x streamed,
and `import router` < 0.3 s (fresh interpreters, median of 5).

All three clients ask for `stream_options.include_usage` when streaming (the router always asks
upstream for usage), so the server sends every client the same bytes.

How it measures: per (mode, concurrency) all three clients are built, checked (the answer text
must be the server's) and warmed up (200 requests); the timed requests are then split into
`--slices` slices and the clients take turns slice by slice in a rotating order (each slice
preceded by a short untimed top-up of the pool), so a burst of background load hits all of them
alike. Besides req/s and latency the table shows, per client, the connections the server saw
opened while timed (0 = keep-alive reused), the client's own CPU time per request (robust to a
busy machine) and the cores other processes used meanwhile.

The machine this was written for has 2 cores: the client process and the server process
compete for them (`--pin` puts each on its own core instead). The client is one Python
thread, so it saturates one core; the server uses a small fraction of the other. Numbers are
for comparison within one run, not absolute. `--check` exits 1 when a target is missed.

See also: bench/profile_client.py
(cProfile per request) and bench/hotspots.py (summarise a py-spy profile).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/x.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package: the repo root goes first, bench/ last (for its helper modules).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]

import fake_server  # noqa: E402  (bench/fake_server.py)

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say something about foxes and dogs."},
]
MAX_TOKENS = 16
EMBED_INPUT = "Say something about foxes and dogs."
MODEL = fake_server.MODEL
ALIAS = "bench"
EXPECTED_TEXT = fake_server.TEXT
CLIENTS = ("raw aiohttp", "raw httpx2", "openai", "router")
LONG = fake_server.LONG_CHUNKS
CHUNKS = {"stream": len(fake_server.WORDS) + 3, "long-stream": LONG + 3}
"""SSE events per streamed answer: role, content chunks, finish, usage."""
MODES = ("non-stream", "stream", "long-stream", "parse", "embeddings")
"""`long-stream`: 256-chunk streams (client CPU per chunk is what it measures; run it at c=16);
`parse`: `chat.completions.parse` (openai's own code over the router's routing transport);
`embeddings`: `embeddings.create`. raw httpx2 does the same POST and `json.loads` for both."""
DEFAULT_MODES = ("non-stream", "stream")

# --- the three clients ---------------------------------------------------------------------


class Client:
    """One client under test: a non-streamed call, a streamed call (fully consumed), close."""

    name: str

    async def complete(self) -> None:
        raise NotImplementedError

    async def stream(self) -> None:
        raise NotImplementedError

    async def check(self, stream: bool) -> str:
        """One call whose answer text is returned, to verify the plumbing before timing."""
        raise NotImplementedError

    async def parse(self) -> None:
        raise NotImplementedError

    async def embed(self) -> None:
        raise NotImplementedError

    async def check_embed(self) -> int:
        """One embeddings call: the vector's length."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def call(self, mode: str) -> Callable[[], Awaitable[None]]:
        """The timed call for a mode."""
        if mode == "long-stream":
            return self.long_stream
        return {"non-stream": self.complete, "stream": self.stream, "parse": self.parse, "embeddings": self.embed}[mode]

    async def long_stream(self) -> None:
        raise NotImplementedError

    async def check_long(self) -> str:
        """One 256-chunk stream's text."""
        raise NotImplementedError


class RawHttpx2(Client):
    name = "raw httpx2"

    def __init__(self, base_url: str) -> None:
        import httpx2

        self._url = base_url + "/chat/completions"
        # Same pool limits as the router's own client (httpx2's default keeps only 20 idle
        # connections, which would make a 64-way client reconnect and lose on purpose).
        self._client = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=httpx2.Timeout(None, connect=5.0),
        )
        self._headers = {"content-type": "application/json", "accept": "application/json", "authorization": "Bearer x"}
        self._embed_url = base_url + "/embeddings"
        self._embed_body = json.dumps({"model": MODEL, "input": EMBED_INPUT}).encode()
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}

    def _body(self, stream: bool, max_tokens: int = MAX_TOKENS) -> bytes:
        body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    async def complete(self) -> None:
        response = await self._client.post(self._url, content=self._body(False), headers=self._headers)
        response.raise_for_status()
        json.loads(response.content)

    async def stream(self, max_tokens: int = MAX_TOKENS) -> None:
        async with self._client.stream(
            "POST", self._url, content=self._body(True, max_tokens), headers=self._stream_headers
        ) as response:
            response.raise_for_status()
            # Read to the end of the body (past `[DONE]`), so the connection goes back to the pool.
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                    if data != "[DONE]":
                        json.loads(data)

    async def long_stream(self) -> None:
        await self.stream(LONG)

    async def check_long(self) -> str:
        text = []
        async with self._client.stream(
            "POST", self._url, content=self._body(True, LONG), headers=self._stream_headers
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    text += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
        return "".join(text)

    async def check(self, stream: bool) -> str:
        if not stream:
            response = await self._client.post(self._url, content=self._body(False), headers=self._headers)
            return str(json.loads(response.content)["choices"][0]["message"]["content"])
        text = []
        async with self._client.stream(
            "POST", self._url, content=self._body(True), headers=self._stream_headers
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    for choice in json.loads(line[6:])["choices"]:
                        text.append(choice["delta"].get("content") or "")
        return "".join(text)

    async def parse(self) -> None:
        await self.complete()

    async def embed(self) -> None:
        response = await self._client.post(self._embed_url, content=self._embed_body, headers=self._headers)
        response.raise_for_status()
        json.loads(response.content)

    async def check_embed(self) -> int:
        response = await self._client.post(self._embed_url, content=self._embed_body, headers=self._headers)
        return len(json.loads(response.content)["data"][0]["embedding"])

    async def aclose(self) -> None:
        await self._client.aclose()


class RawAiohttp(Client):
    """The floor: aiohttp, the body read and `json.loads`-ed (stream: every `data:` line)."""

    name = "raw aiohttp"

    def __init__(self, base_url: str) -> None:
        self._url = base_url + "/chat/completions"
        self._embed_url = base_url + "/embeddings"
        self._session: Any = None
        self._headers = {"content-type": "application/json", "authorization": "Bearer x"}

    def _open(self) -> Any:
        import aiohttp

        if self._session is None:  # made inside the running loop, as aiohttp wants
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        return self._session

    def _body(self, stream: bool, max_tokens: int = MAX_TOKENS) -> bytes:
        return RawHttpx2._body(self, stream, max_tokens)  # type: ignore[arg-type]

    async def complete(self) -> None:
        async with self._open().post(self._url, data=self._body(False), headers=self._headers) as response:
            response.raise_for_status()
            json.loads(await response.read())

    async def _lines(self, max_tokens: int) -> list[Any]:
        out = []
        async with self._open().post(self._url, data=self._body(True, max_tokens), headers=self._headers) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                    out.append(json.loads(line[6:]))
        return out

    async def stream(self) -> None:
        await self._lines(MAX_TOKENS)

    async def long_stream(self) -> None:
        await self._lines(LONG)

    async def check(self, stream: bool) -> str:
        if not stream:
            async with self._open().post(self._url, data=self._body(False), headers=self._headers) as response:
                return str(json.loads(await response.read())["choices"][0]["message"]["content"])
        return "".join(c["delta"].get("content") or "" for e in await self._lines(MAX_TOKENS) for c in e["choices"])

    async def check_long(self) -> str:
        return "".join(c["delta"].get("content") or "" for e in await self._lines(LONG) for c in e["choices"])

    async def parse(self) -> None:
        await self.complete()

    async def embed(self) -> None:
        body = json.dumps({"model": MODEL, "input": EMBED_INPUT}).encode()
        async with self._open().post(self._embed_url, data=body, headers=self._headers) as response:
            json.loads(await response.read())

    async def check_embed(self) -> int:
        body = json.dumps({"model": MODEL, "input": EMBED_INPUT}).encode()
        async with self._open().post(self._embed_url, data=body, headers=self._headers) as response:
            return len(json.loads(await response.read())["data"][0]["embedding"])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _SDKLike(Client):
    """openai.AsyncOpenAI and AsyncRouter share the `chat.completions.create` surface."""

    _create: Callable[..., Awaitable[Any]]
    _model: str
    _sdk: Any

    async def parse(self) -> None:
        await self._sdk.chat.completions.parse(model=self._model, messages=MESSAGES, max_tokens=MAX_TOKENS)

    async def embed(self) -> None:
        await self._sdk.embeddings.create(model=self._model, input=EMBED_INPUT)

    async def check_embed(self) -> int:
        result = await self._sdk.embeddings.create(model=self._model, input=EMBED_INPUT)
        return len(result.data[0].embedding)

    async def complete(self) -> None:
        await self._create(model=self._model, messages=MESSAGES, max_tokens=MAX_TOKENS)

    async def stream(self, max_tokens: int = MAX_TOKENS) -> None:
        stream = await self._create(
            model=self._model,
            messages=MESSAGES,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            async for _chunk in stream:
                pass
        finally:
            await stream.close()

    async def long_stream(self) -> None:
        await self.stream(LONG)

    async def check_long(self) -> str:
        chunks = await self._create(
            model=self._model, messages=MESSAGES, max_tokens=LONG, stream=True, stream_options={"include_usage": True}
        )
        text = [c.delta.content or "" async for chunk in chunks for c in chunk.choices]
        await chunks.close()
        return "".join(text)

    async def check(self, stream: bool) -> str:
        if not stream:
            reply = await self._create(model=self._model, messages=MESSAGES, max_tokens=MAX_TOKENS)
            return str(reply.choices[0].message.content)
        text = []
        chunks = await self._create(
            model=self._model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in chunks:
            text += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        await chunks.close()
        if usage is None:
            raise AssertionError(f"{self.name}: no usage chunk in the stream")
        return "".join(text)


class OpenAISDK(_SDKLike):
    name = "openai"

    def __init__(self, base_url: str) -> None:
        import openai

        self._client = self._sdk = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        self._create = self._client.chat.completions.create
        self._model = MODEL

    async def aclose(self) -> None:
        await self._client.close()


class RouterClient(_SDKLike):
    name = "router"

    def __init__(self, base_urls: list[str]) -> None:
        from router.client import AsyncRouter

        names = "abc"
        self._client = AsyncRouter.from_config(
            {
                "backends": {
                    n: {"provider": "openai", "base_url": url, "api_key": "x"}
                    for n, url in zip(names, base_urls, strict=False)
                },
                "models": {ALIAS: {"deployments": [{"backend": n, "model": MODEL} for n in names[: len(base_urls)]]}},
            }
        )
        self._sdk = self._client
        self._create = self._client.chat.completions.create
        self._model = ALIAS

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(name: str, base_urls: list[str]) -> Client:
    if name == "raw aiohttp":
        return RawAiohttp(base_urls[0])
    if name == "raw httpx2":
        return RawHttpx2(base_urls[0])
    if name == "openai":
        return OpenAISDK(base_urls[0])
    if name == "router":
        return RouterClient(base_urls)
    raise ValueError(name)


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Cell:
    """One (mode, concurrency, client): per-round results."""

    mode: str
    concurrency: int
    client: str
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0
    new_connections: list[int] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def rps_m(self) -> float:
        return statistics.median(self.rps)

    @property
    def cpu_ms_m(self) -> float:
        """Client CPU milliseconds per request (this process's CPU time / requests): robust to a
        busy machine in a way req/s is not, since stolen time isn't counted."""
        return statistics.median(u["client"] / r * 1e3 for u, r in zip(self.cpu, self.rps, strict=True))

    @property
    def p50_m(self) -> float:
        return statistics.median(self.p50)

    @property
    def p99_m(self) -> float:
        return statistics.median(self.p99)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


async def drive(call: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> tuple[float, list[float], int]:
    """`requests` calls from `concurrency` workers; (wall seconds, per-call latencies, errors)."""
    remaining = requests
    latencies: list[float] = []
    errors = 0
    perf = time.perf_counter

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = perf()
            try:
                await call()
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    print(f"  ! {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            latencies.append(perf() - t0)

    started = perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return perf() - started, latencies, errors


def server_connections(port: int) -> int:
    """Connections the fake server has accepted so far, not counting this query's own."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/stats")
        return int(json.loads(conn.getresponse().read())["connections"]) - 1
    finally:
        conn.close()


class CpuMeter:
    """CPU used by the client (this process), the server, and everything else, over intervals.

    The machine may be shared: a background job (a test run, a build) steals cores from the
    client and the server and makes a cell slow. `other` shows how much, in cores on average.
    """

    def __init__(self, server_pid: int) -> None:
        self._server_stat = f"/proc/{server_pid}/stat"
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = os.path.exists("/proc/stat") and os.path.exists(self._server_stat)

    def sample(self) -> tuple[float, ...]:
        """(wall, busy CPU seconds of the machine, of this process, of the server)."""
        if not self.available:
            return (time.perf_counter(), 0.0, 0.0, 0.0)
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / self._tick  # all but idle and iowait
        with open(self._server_stat) as f:
            stat = f.read().rsplit(")", 1)[1].split()
        server = (int(stat[11]) + int(stat[12])) / self._tick
        return time.perf_counter(), busy, time.process_time(), server

    @staticmethod
    def delta(start: tuple[float, ...], end: tuple[float, ...]) -> list[float]:
        return [b - a for a, b in zip(start, end, strict=True)]

    def cores(self, total: list[float]) -> dict[str, float] | None:
        """Average cores used by the client, the server and the rest over summed deltas."""
        if not self.available or total[0] <= 0:
            return None
        wall, busy, client, server = total
        return {"client": client / wall, "server": server / wall, "other": max(0.0, busy - client - server) / wall}


@dataclass
class _Run:
    client: Client
    call: Callable[[], Awaitable[None]]
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    opened: int = 0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])


async def measure_group(
    names: list[str],
    base_urls: list[str],
    port: int,
    mode: str,
    concurrency: int,
    requests: int,
    warmup: int,
    slices: int,
    meter: CpuMeter,
    round_: int,
) -> dict[str, tuple[float, float, float, int, int, dict[str, float] | None]]:
    """Time every client on one (mode, concurrency), interleaved.

    Each client is built, checked (its answer must be the server's text) and warmed up; then the
    `requests` timed calls are split into `slices` and the clients take turns slice by slice, in
    a rotating order, so a burst of background load hits them all alike. Per client: (req/s, p50,
    p99, errors, connections opened while timed, cores used while timed).
    """
    streaming = mode == "stream"
    runs: dict[str, _Run] = {}
    try:
        for name in names:
            client = make_client(name, base_urls)
            runs[name] = _Run(client, client.call(mode))
            if mode == "embeddings":
                if await client.check_embed() != 64:
                    raise AssertionError(f"{name} {mode}: not the server's 64-float vector")
            elif mode == "long-stream":
                if (text := await client.check_long()) != fake_server.LONG_TEXT:
                    raise AssertionError(f"{name} {mode}: got {text[:60]!r}…, expected the 256-chunk text")
            elif (text := await client.check(streaming)) != EXPECTED_TEXT:
                raise AssertionError(f"{name} {mode}: got {text!r}, expected {EXPECTED_TEXT!r}")
            await drive(runs[name].call, warmup, concurrency)  # fills the pool, warms code paths
        sizes = [requests // slices + (1 if i < requests % slices else 0) for i in range(slices)]
        for index, size in enumerate(sizes):
            shift = (index + round_) % len(names)
            for name in names[shift:] + names[:shift]:
                run = runs[name]
                # Top the pool up first: idle keep-alive connections expire after 5 s while the
                # other clients take their turn, and reconnecting is not what is measured here.
                await drive(run.call, 2 * concurrency, concurrency)
                gc.collect()
                before = server_connections(port)
                start = meter.sample()
                wall, latencies, errors = await drive(run.call, size, concurrency)
                run.cpu = [a + b for a, b in zip(run.cpu, CpuMeter.delta(start, meter.sample()), strict=True)]
                run.opened += server_connections(port) - before - 1  # minus the `before` query's own
                run.wall += wall
                run.latencies += latencies
                run.errors += errors
    finally:
        for run in runs.values():
            await run.client.aclose()
    out = {}
    for name, run in runs.items():
        run.latencies.sort()
        out[name] = (
            len(run.latencies) / run.wall,
            percentile(run.latencies, 50),
            percentile(run.latencies, 99),
            run.errors,
            run.opened,
            meter.cores(run.cpu),
        )
    return out


# --- import times --------------------------------------------------------------------------

_IMPORT_SNIPPET = """
import time, sys
t = time.perf_counter()
{stmt}
sys.stdout.write(repr(time.perf_counter() - t))
"""


def import_time(stmt: str, runs: int = 5) -> float:
    """Median seconds for `stmt` in fresh interpreters (interpreter start-up excluded)."""
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_SNIPPET.format(stmt=stmt)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        samples.append(float(out))
    return statistics.median(samples)


# --- output --------------------------------------------------------------------------------


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def report(cells: dict[tuple[str, int, str], Cell], imports: dict[str, float], args: argparse.Namespace) -> bool:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    table = Table(
        title=f"Client overhead: {args.requests} timed requests per cell, clients interleaved in "
        f"{args.slices} slices{f', median of {args.rounds} rounds' if args.rounds > 1 else ''}",
        title_justify="left",
        caption="÷raw: ratio to raw httpx2 in this run (req/s: higher is better; "
        "latency: lower is better). new conn: connections opened while timed (0 = keep-alive reused). "
        "client cpu/req: the client process's CPU time per request. "
        "other cpu: cores used by other processes meanwhile.",
        caption_justify="left",
    )
    for col, justify in [
        ("mode", "left"),
        ("conc", "right"),
        ("client", "left"),
        ("req/s", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("req/s ÷raw", "right"),
        ("p50 ÷raw", "right"),
        ("p99 ÷raw", "right"),
        ("new conn", "right"),
        ("client cpu/req", "right"),
        ("other cpu", "right"),
        ("err", "right"),
    ]:
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for mode in args.modes:
        for conc in args.concurrency:
            raw = cells.get((mode, conc, "raw httpx2"))
            for name in args.clients:
                cell = cells.get((mode, conc, name))
                if cell is None:
                    continue
                if raw is not None:
                    ratios = [
                        _fmt_ratio(cell.rps_m / raw.rps_m),
                        _fmt_ratio(cell.p50_m / raw.p50_m),
                        _fmt_ratio(cell.p99_m / raw.p99_m),
                    ]
                else:
                    ratios = ["-", "-", "-"]
                table.add_row(
                    mode,
                    str(conc),
                    name,
                    f"{cell.rps_m:,.0f}",
                    f"{cell.p50_m * 1e3:.2f}",
                    f"{cell.p99_m * 1e3:.2f}",
                    *ratios,
                    str(max(cell.new_connections)),
                    f"{cell.cpu_ms_m:.2f} ms" if cell.cpu else "-",
                    f"{max(c['other'] for c in cell.cpu):.2f}" if cell.cpu else "-",
                    str(cell.errors),
                    end_section=name == args.clients[-1],
                )
    console.print(table)

    lines = ["", "Summary (ratios are throughput unless marked; latency ratios > 1 are slower):"]
    for mode in args.modes:
        for conc in args.concurrency:
            raw = cells.get((mode, conc, "raw httpx2"))
            oa = cells.get((mode, conc, "openai"))
            rt = cells.get((mode, conc, "router"))
            parts = []
            if raw and oa:
                parts.append(f"openai/raw {oa.rps_m / raw.rps_m:.2f}")
            if raw and rt:
                parts.append(f"router/raw {rt.rps_m / raw.rps_m:.2f}")
            if oa and rt:
                cpu = f", client cpu/req {rt.cpu_ms_m / oa.cpu_ms_m:.2f}" if rt.cpu and oa.cpu else ""
                parts.append(
                    f"router/openai {rt.rps_m / oa.rps_m:.2f} (p50 {rt.p50_m / oa.p50_m:.2f}, "
                    f"p99 {rt.p99_m / oa.p99_m:.2f}{cpu})"
                )
            if parts:
                lines.append(f"  {mode:<10} c={conc:<3} " + "; ".join(parts))

    lines += ["", "Client CPU per call (per chunk for streams), by concurrency:"]
    for mode in args.modes:
        for name in args.clients:
            row = [(conc, cells.get((mode, conc, name))) for conc in args.concurrency]
            measured = [(conc, cell) for conc, cell in row if cell is not None and cell.cpu]
            if not measured:
                continue
            per = CHUNKS.get(mode, 1)
            unit = "chunk" if per > 1 else "call"
            values = ", ".join(f"c={conc} {cell.cpu_ms_m * 1e3 / per:,.1f} µs" for conc, cell in measured)
            lines.append(f"  {mode:<11} {name:<11} per {unit}: {values}")

    if imports:
        runs = 1 if args.quick else 5
        how = "median of 5" if runs == 5 else "1 run"
        lines += ["", f"Import times (fresh interpreter, {how}, start-up excluded):"]
        for stmt, seconds in imports.items():
            lines.append(f"  {stmt:<32} {seconds * 1e3:7.1f} ms")

    lines += ["", "Targets:"]
    all_met = True
    for mode, factor in (("non-stream", 1.3), ("stream", 2.0)):
        oa, rt = cells.get((mode, 64, "openai")), cells.get((mode, 64, "router"))
        if oa is None or rt is None:
            lines.append(f"  router >= {factor}x openai req/s, {mode}, c=64: not measured")
            continue
        ratio = rt.rps_m / oa.rps_m
        met = ratio >= factor
        all_met &= met
        lines.append(
            f"  router >= {factor}x openai req/s, {mode:<10} c=64: {ratio:.2f}x "
            f"({rt.rps_m:,.0f} vs {oa.rps_m:,.0f} req/s)  {'MET' if met else 'MISSED'}"
        )
    for mode, conc, factor in (("non-stream", 64, 3.0), ("long-stream", 16, 2.0)):
        floor, rt = cells.get((mode, conc, "raw aiohttp")), cells.get((mode, conc, "router"))
        per = "chunk" if mode in CHUNKS else "call"
        if floor is None or rt is None or not floor.cpu or not rt.cpu:
            lines.append(f"  router client CPU per {per} <= {factor}x raw aiohttp's, {mode} c={conc}: not measured")
            continue
        ratio = rt.cpu_ms_m / floor.cpu_ms_m
        met = ratio <= factor
        all_met &= met
        chunks = CHUNKS.get(mode, 1)
        lines.append(
            f"  router client CPU per {per} <= {factor}x raw aiohttp's, {mode} c={conc}: {ratio:.2f}x "
            f"({rt.cpu_ms_m * 1e3 / chunks:,.1f} vs {floor.cpu_ms_m * 1e3 / chunks:,.1f} µs)  "
            f"{'MET' if met else 'MISSED'}"
        )
    if "import router" in imports:
        met = imports["import router"] < 0.3
        all_met &= met
        lines.append(f"  import router < 0.3 s: {imports['import router']:.3f} s  {'MET' if met else 'MISSED'}")
    lines.append(f"  all targets met: {'yes' if all_met else 'NO'}")
    busy = [c for c in cells.values() if c.cpu and max(u["other"] for u in c.cpu) > 0.15]
    if busy:
        lines.append(
            f"  ! other processes used > 0.15 cores during {len(busy)} cell(s) ('other cpu' column, in "
            f"cores): those numbers are noisy; rerun on an idle machine"
            f"{'' if args.rounds >= 3 else ' or with --rounds 3'}"
        )
    churn = [c for c in cells.values() if max(c.new_connections) >= args.requests // 2]
    for c in churn:
        lines.append(
            f"  ! {c.client} {c.mode} c={c.concurrency} opened {max(c.new_connections)} new connections "
            f"for {args.requests} requests after warm-up: it does not reuse keep-alive connections"
        )
    errors = sum(c.errors for c in cells.values())
    if errors:
        lines.append(f"  ! {errors} failed requests (excluded from latencies; see stderr)")
    print("\n".join(lines), flush=True)
    return all_met


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per cell (default 2000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests per cell, 1 import sample")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell, report medians (default 1)")
    parser.add_argument(
        "--slices", type=int, default=4, help="the clients take turns in this many slices of each cell (default 4)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed requests per cell first (default 200)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    parser.add_argument(
        "--clients",
        type=lambda s: [c.strip() for c in s.split(",")],
        default=list(CLIENTS),
        help=f"comma-separated subset of: {', '.join(CLIENTS)}",
    )
    parser.add_argument(
        "--modes",
        type=lambda s: [m.strip() for m in s.split(",")],
        default=list(DEFAULT_MODES),
        help=f"comma-separated subset of: {', '.join(MODES)}",
    )
    parser.add_argument("--pin", action="store_true", help="pin client to core 0 and server to core 1")
    parser.add_argument("--no-imports", action="store_true", help="skip the import-time measurements")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.quick and "--requests" not in (argv if argv is not None else sys.argv[1:]):
        args.requests = 300
    if args.warmup is None:
        args.warmup = 100 if args.quick else 200
    for name in args.clients:
        if name not in CLIENTS:
            parser.error(f"unknown client {name!r}")
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import httpx2
    import openai

    pinned = args.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"openai {openai.__version__}, httpx2 {httpx2.__version__}; asyncio event loop"
    )
    print(
        "client and server run in separate processes and "
        + ("are pinned to cores 0 and 1." if pinned else "compete for the same cores.")
    )

    imports: dict[str, float] = {}
    if not args.no_imports:
        runs = 1 if args.quick else 5
        for stmt in ("import router", "from router import AsyncRouter", "import openai"):
            imports[stmt] = import_time(stmt, runs)

    cells: dict[tuple[str, int, str], Cell] = {}
    with fake_server.server_process(ports=3, cpu=1 if pinned else None) as server:
        ports = server.ports
        meter = CpuMeter(server.pid)
        if pinned:
            os.sched_setaffinity(0, {0})
        base_urls = [f"http://127.0.0.1:{port}/v1" for port in ports]

        async def run_all() -> None:
            for round_ in range(args.rounds):
                for mode in args.modes:
                    for conc in args.concurrency:
                        results = await measure_group(
                            args.clients,
                            base_urls,
                            ports[0],
                            mode,
                            conc,
                            args.requests,
                            args.warmup,
                            args.slices,
                            meter,
                            round_,
                        )
                        for name, (rps, p50, p99, errors, opened, cpu) in results.items():
                            cell = cells.setdefault((mode, conc, name), Cell(mode, conc, name))
                            cell.rps.append(rps)
                            cell.p50.append(p50)
                            cell.p99.append(p99)
                            cell.errors += errors
                            cell.new_connections.append(opened)
                            if cpu is not None:
                                cell.cpu.append(cpu)
                            used = (
                                ""
                                if cpu is None
                                else (
                                    f"  cores: client {cpu['client']:.2f} server {cpu['server']:.2f} "
                                    f"other {cpu['other']:.2f}"
                                )
                            )
                            print(
                                f"  [{round_ + 1}/{args.rounds}] {mode:<10} c={conc:<3} {name:<10} "
                                f"{rps:8,.0f} req/s  p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  "
                                f"new conns {opened}{used}",
                                file=sys.stderr,
                                flush=True,
                            )

        asyncio.run(run_all())

    all_met = report(cells, imports, args)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "requests": args.requests,
                    "rounds": args.rounds,
                    "pinned": pinned,
                    "cells": [
                        {
                            "mode": c.mode,
                            "concurrency": c.concurrency,
                            "client": c.client,
                            "rps": c.rps,
                            "p50_s": c.p50,
                            "p99_s": c.p99,
                            "errors": c.errors,
                            "new_connections": c.new_connections,
                            "cores": c.cpu,
                        }
                        for c in cells.values()
                    ],
                    "imports_s": imports,
                    "targets_met": all_met,
                },
                indent=2,
            )
        )
    return 1 if args.check and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
