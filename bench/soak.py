"""Soak: minutes of mixed traffic through one router while its backends die, stall and come back.

    python bench/soak.py [--minutes 5] [--concurrency 64] [--seed 1]

Not a test (pytest never collects it): it prints one scorecard for a person to read, and exits 1
when a must-be-zero line is not zero.

One `AsyncRouter` (shared state and cache in a real `redis-server`) serves `--concurrency` workers
that call it back to back with a mix of requests: streamed or not, cacheable (`temperature: 0`,
a few fixed prompts) or not (`temperature: 1`, a unique prompt), with `tools` or without, each
with `route={"deadline_s": 10}`. Two aliases:

- `local` = two real llama.cpp servers (`router/local/llamacpp_server.py`, the tiny generated
  model), `llama1` preferred (`ordered`), falling back to `mock`;
- `mock` = two backends of the loopback fault server (`tests/fault_server.py`), `f1` then `f2`,
  falling back to `local`.

Meanwhile a driver, on a 60 s cycle: SIGKILLs `llama1` and starts it again 8 s later (then the
same for `llama2`), SIGKILLs `redis-server` and starts it again 4 s later, and makes `f1` answer
part of its requests with 429 + `Retry-After`, stalled streams, streams cut after two tokens, 5xx,
silence and connection resets, one fault at a time.

Every answer is checked for completeness: the fault server's are a known text; llama.cpp's tiny
model answers exactly `max_tokens` characters with `finish_reason: "length"`, and at
`temperature: 0` a known text (read from the server before the soak). A stream's text must be
that text, in order, with nothing repeated; a `StreamInterruptedError`'s partial text must be a
prefix of it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/policies.py would shadow policies/
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import httpx2  # noqa: E402
import openai  # noqa: E402

from router.local.llamacpp_server import LlamaCppServer  # noqa: E402
from router.local.tiny_gguf import write_tiny_gguf  # noqa: E402
from tests.fault_server import (  # noqa: E402
    Behaviour,
    FaultServer,
    cut_after,
    ok,
    reset_before_headers,
    silent,
    stall_after,
    status,
)
from tests.redis_server import RedisServer  # noqa: E402

MODEL = "tiny-llama"
DEADLINE_S = 10.0
GRACE_S = 5.0
"""A call still running this long past its deadline counts as hung (and is cancelled)."""
TEXTS = {name: f"{name} says alpha beta gamma delta epsilon zeta eta theta" for name in ("f1", "f2")}
PROMPTS = ("hello there", "what is two and two", "tell me a short story")
CACHEABLE_MAX_TOKENS = (8, 12)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CYCLE_S = 60.0
FAULTS: dict[str, Callable[[], Behaviour]] = {
    "429": lambda: status(429, retry_after=1),
    "stall": lambda: stall_after(2, 20.0, TEXTS["f1"]),
    "cut": lambda: cut_after(2, TEXTS["f1"]),
    "5xx": lambda: status(503),
    "silent": lambda: silent(8.0),
    "reset": lambda: reset_before_headers(),
}
"""What f1 does to a share of its requests while that fault is on (one at a time, see `schedule`)."""
FAULT_SHARE = 0.6


# --- what a call asked for and what it got --------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One call: which alias, streamed or not, cacheable or not, with tools or not."""

    alias: str
    stream: bool
    cacheable: bool
    tools: bool
    prompt: str
    max_tokens: int

    def body(self) -> dict[str, Any]:
        """The `create()` arguments (besides `model` and `stream`)."""
        args: dict[str, Any] = {
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0 if self.cacheable else 1.0,
            "route": {"deadline_s": DEADLINE_S},
        }
        if self.stream:
            args["stream_options"] = {"include_usage": True}
        if self.tools:
            args["tools"] = TOOLS
        return args


def draw(rng: random.Random, n: int) -> Spec:
    """A random call: 55 % to `local`, half streamed, 40 % cacheable, 25 % with tools."""
    cacheable = rng.random() < 0.4
    return Spec(
        alias="local" if rng.random() < 0.55 else "mock",
        stream=rng.random() < 0.5,
        cacheable=cacheable,
        tools=rng.random() < 0.25,
        prompt=rng.choice(PROMPTS) if cacheable else f"{rng.choice(PROMPTS)} #{n}",
        max_tokens=rng.choice(CACHEABLE_MAX_TOKENS) if cacheable else rng.randint(6, 16),
    )


@dataclass
class Outcome:
    """What one call showed."""

    spec: Spec
    started: float
    seconds: float
    result: str
    """`ok`, the openai error class, `hung`, or `unclean:<class>` for anything not an openai.APIError."""
    backend: str | None = None
    cached: bool = False
    problem: str | None = None
    """`truncated` (an incomplete answer returned as a success) or `garbled` (repeated or out-of-order text)."""
    detail: str = ""


@dataclass
class Expected:
    """The complete answers the call may legitimately get."""

    texts: dict[tuple[str, int, bool], str] = field(default_factory=dict)
    """llama.cpp's answer at temperature 0, by (prompt, max_tokens, tools)."""

    def llama(self, spec: Spec) -> str | None:
        return self.texts.get((spec.prompt, spec.max_tokens, spec.tools)) if spec.cacheable else None

    def judge(self, spec: Spec, backend: str | None, text: str, finish: str | None, tokens: int | None) -> str | None:
        """None if `text` is a complete answer this call may get; else `truncated` or `garbled`.

        llama.cpp: `max_tokens` tokens (its usage) and `finish_reason: "length"`, one character per
        token; with `tools` its chat parser trims the content's surrounding whitespace, so up to that."""
        if backend in TEXTS:
            return _against(text, [TEXTS[backend]], finish == "stop")
        if backend is not None:  # a llama.cpp server
            exact = self.llama(spec)
            if exact is not None:
                return _against(text, [exact], finish == "length")
            if _length_ok(spec, text) and finish == "length" and tokens == spec.max_tokens:
                return None
            return "truncated" if len(text) < spec.max_tokens or finish != "length" else "garbled"
        # from the cache: whatever a backend of the alias (or its fallback) answered
        candidates = [*TEXTS.values(), *filter(None, [self.llama(spec)])]
        if text in candidates:
            return None
        if self.llama(spec) is None and _length_ok(spec, text):
            return None
        return "truncated" if any(c.startswith(text) for c in candidates) else "garbled"

    def partial_ok(self, spec: Spec, backend: str | None, partial: str) -> bool:
        """A broken stream's partial text is the start of an answer it may get, in order."""
        if backend in TEXTS:
            return TEXTS[backend].startswith(partial)
        exact = self.llama(spec)
        if backend is not None and exact is not None:
            return exact.startswith(partial)
        return len(partial) <= spec.max_tokens


def _length_ok(spec: Spec, text: str) -> bool:
    """One character per token, but a tools answer may have lost surrounding whitespace to the parser."""
    if len(text) == spec.max_tokens:
        return True
    return spec.tools and 0 < len(text) < spec.max_tokens and text == text.strip()


def _against(text: str, complete: list[str], finished: bool) -> str | None:
    if text in complete and finished:
        return None
    return "truncated" if any(c.startswith(text) for c in complete) else "garbled"


# --- the backends and their driver -----------------------------------------------------------


@dataclass
class Timeline:
    """When each backend was down, on the soak's clock (seconds since it started)."""

    down: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    fault: str | None = None
    events: list[str] = field(default_factory=list)

    def went_down(self, name: str, t: float) -> None:
        self.down.setdefault(name, []).append((t, float("inf")))
        self.events.append(f"{t:6.1f}s {name} SIGKILL")

    def came_up(self, name: str, t: float) -> None:
        start, _ = self.down[name][-1]
        self.down[name][-1] = (start, t)
        self.events.append(f"{t:6.1f}s {name} up again")

    def up_for(self, name: str, t: float) -> float:
        """How long `name` had been up at `t` (inf if it never went down before `t`)."""
        last_up = float("-inf")
        for start, end in self.down.get(name, []):
            if start <= t < end:
                return -1.0
            if end <= t:
                last_up = end
        return t - last_up


class Backends:
    """Two llama.cpp servers, the fault server (f1, f2) and redis-server, started and killed by PID."""

    def __init__(self, workdir: Path, rng: random.Random) -> None:
        model = write_tiny_gguf(workdir / "tiny.gguf")
        self.llama = {
            name: LlamaCppServer(model, log_path=workdir / f"{name}.log", alias=MODEL) for name in ("llama1", "llama2")
        }
        self.redis = RedisServer(workdir / "redis")
        self.timeline = Timeline()
        self._rng = rng
        self.fault = FaultServer(max_hold_s=20.0, f1=self._f1, f2=ok(TEXTS["f2"]))

    def _f1(self, n: int, t: float, body: Any) -> Behaviour:
        mode = self.timeline.fault
        if mode is not None and self._rng.random() < FAULT_SHARE:
            return FAULTS[mode]()
        return ok(TEXTS["f1"])

    def start(self) -> None:
        for server in self.llama.values():
            server.start()
        self.redis.start()

    def close(self) -> None:
        for server in self.llama.values():
            server.stop()
        self.redis.stop()
        self.fault.close()

    def ports(self) -> dict[str, int]:
        """Every backend's port, by name (the client side of a socket to it is the router's)."""
        out = {name: server.port for name, server in self.llama.items()}
        out |= {name: int(self.fault.base_url(name).split(":")[2].split("/")[0]) for name in ("f1", "f2")}
        assert self.redis.port is not None
        return out | {"redis": self.redis.port}

    async def drive(self, clock: Callable[[], float], until: float) -> None:
        """Kill and restart, and switch f1's faults, on a `CYCLE_S` schedule until `until`."""
        cycle = 0
        while (base := cycle * CYCLE_S) < until:
            for at, action in schedule():
                if base + at >= until:
                    return
                await anyio.sleep(max(0.0, base + at - clock()))
                await action(self, clock())
            cycle += 1

    async def kill(self, name: str, t: float) -> None:
        await anyio.to_thread.run_sync(self.llama[name].kill if name != "redis" else self.redis.kill)
        self.timeline.went_down(name, t)

    async def restart(self, name: str, clock: Callable[[], float]) -> None:
        await anyio.to_thread.run_sync(self.llama[name].start if name != "redis" else self.redis.start)
        self.timeline.came_up(name, clock())

    async def forget(self, clock: Callable[[], float], until: float) -> None:
        """Empty the fault server's request logs every 10 s: they are a test's record, not the router's memory."""
        while clock() < until:
            await anyio.sleep(10.0)
            self.fault.script("f1", self._f1)
            self.fault.script("f2", ok(TEXTS["f2"]))

    def set_fault(self, mode: str | None, t: float) -> None:
        self.timeline.fault = mode
        self.timeline.events.append(f"{t:6.1f}s f1 {mode or 'healthy'}")


Action = Callable[[Backends, float], Any]


def schedule() -> list[tuple[float, Action]]:
    """One cycle: (seconds into the cycle, what happens)."""

    def kill(name: str) -> Action:
        return lambda b, t: b.kill(name, t)

    def restart(name: str) -> Action:
        return lambda b, t: b.restart(name, _now)

    def fault(mode: str | None) -> Action:
        async def go(b: Backends, t: float) -> None:
            b.set_fault(mode, t)

        return go

    return [
        (5, kill("llama1")),
        (13, restart("llama1")),
        (16, fault("429")),
        (21, fault("stall")),
        (26, fault("cut")),
        (30, kill("redis")),
        (31, fault("5xx")),
        (34, restart("redis")),
        (36, fault("silent")),
        (40, kill("llama2")),
        (41, fault("reset")),
        (46, fault(None)),
        (48, restart("llama2")),
    ]


_T0 = 0.0


def _now() -> float:
    return time.monotonic() - _T0


# --- measuring the process ------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set size, MB (after a full collection)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sockets_to(ports: dict[str, int]) -> Counter[str]:
    """This process's open TCP connections to each backend, by name (client side only)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    by_port = {port: name for name, port in ports.items()}
    found: Counter[str] = Counter()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            remote_port, state, inode = int(cols[2].split(":")[1], 16), cols[3], cols[9]
            if inode in inodes and state == "01" and remote_port in by_port:  # 01: ESTABLISHED
                found[by_port[remote_port]] += 1
    return found


# --- the soak ---------------------------------------------------------------------------------


async def read_expected(backends: Backends) -> Expected:
    """llama.cpp's temperature-0 answer to each cacheable request, asked of both servers (they must agree)."""
    expected = Expected()
    async with httpx2.AsyncClient(timeout=10) as client:
        for prompt in PROMPTS:
            for max_tokens in CACHEABLE_MAX_TOKENS:
                for tools in (False, True):
                    spec = Spec("local", False, True, tools, prompt, max_tokens)
                    body = {k: v for k, v in spec.body().items() if k != "route"} | {"model": MODEL}
                    answers = set()
                    for server in backends.llama.values():
                        reply = (await client.post(server.base_url + "/chat/completions", json=body)).json()
                        answers.add(reply["choices"][0]["message"]["content"])
                    if len(answers) == 1:
                        expected.texts[(prompt, max_tokens, tools)] = answers.pop()
    return expected


async def one_call(router: Any, spec: Spec, expected: Expected, t0: float) -> Outcome:
    """Make the call, read it to the end, and judge it."""
    import router as rt

    started = time.monotonic()
    outcome = Outcome(spec, started - t0, 0.0, "hung")
    with anyio.move_on_after(DEADLINE_S + GRACE_S):
        text: list[str] = []
        finish: str | None = None
        tokens: int | None = None
        reply: Any = None
        try:
            reply = await router.chat.completions.create(model=spec.alias, stream=spec.stream, **spec.body())
            if spec.stream:
                async for chunk in reply:
                    for choice in chunk.choices:
                        text.append(choice.delta.content or "")
                        finish = choice.finish_reason or finish
                    tokens = chunk.usage.completion_tokens if chunk.usage else tokens
            else:
                finish = reply.choices[0].finish_reason
                text.append(reply.choices[0].message.content or "")
                tokens = reply.usage.completion_tokens if reply.usage else None
            route = rt.route_of(reply)
            outcome.result, outcome.backend, outcome.cached = "ok", route.backend, bool(route.cached)
            whole = "".join(text)
            outcome.problem = expected.judge(spec, route.backend if not route.cached else None, whole, finish, tokens)
            if outcome.problem:
                outcome.detail = f"{route.backend} cached={route.cached} finish={finish} tokens={tokens} text={whole!r}"
        except openai.APIError as error:
            outcome.result = type(error).__name__
            partial = getattr(error, "partial_text", None)
            route = getattr(error, "route", None)
            if partial and not expected.partial_ok(spec, route.backend if route else None, partial):
                outcome.problem = "garbled"
                outcome.detail = f"{route.backend if route else None} partial={partial!r}"
        except Exception as error:  # exactly what the soak is looking for
            outcome.result = f"unclean:{type(error).__name__}: {str(error)[:80]}"
    outcome.seconds = time.monotonic() - started
    return outcome


@dataclass
class Tally:
    """Every outcome, counted as it comes (the outcomes themselves are dropped, so the RSS measured is
    the router's, not a growing list of records)."""

    timeline: Timeline
    calls: int = 0
    ok: int = 0
    results: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    late: int = 0
    exact: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    preferred: Counter[str] = field(default_factory=Counter)
    """`up`/`up_won`: local calls answered upstream while llama1 was up / served by it (`settled…`: up ≥ 10 s)."""
    llama1_starts: array[float] = field(default_factory=lambda: array("d"))
    samples: list[str] = field(default_factory=list)
    """The first few problem calls, in full."""

    def add(self, o: Outcome, expected: Expected) -> None:
        self.calls += 1
        self.results[o.result] += 1
        spec = o.spec
        self.kinds["stream" if spec.stream else "plain"] += 1
        self.kinds["cacheable" if spec.cacheable else "not cacheable"] += 1
        self.kinds["tools" if spec.tools else "no tools"] += 1
        if o.problem:
            self.problems[o.problem] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{o.problem}: {o.spec} → {o.detail}")
        if o.result != "hung" and o.seconds > DEADLINE_S + 1.0:
            self.late += 1
        if o.result != "ok":
            return
        self.ok += 1
        self.latencies.append(o.seconds)
        self.served["cache" if o.cached else o.backend or "?"] += 1
        self.exact += o.backend in TEXTS or expected.llama(spec) is not None
        if o.backend == "llama1" and not o.cached:
            self.llama1_starts.append(o.started)
        if spec.alias == "local" and not o.cached:
            up_for = self.timeline.up_for("llama1", o.started)
            for label, settled_s in (("up", 0.0), ("settled", 10.0)):
                if up_for >= settled_s:
                    self.preferred[label] += 1
                    self.preferred[label + "_won"] += o.backend == "llama1"


@dataclass
class Soak:
    tally: Tally
    rss_start: float = 0.0
    rss_minute: float = 0.0
    """After the first minute: the growth from there on is the slope that matters."""
    rss_end: float = 0.0
    sockets_start: Counter[str] = field(default_factory=Counter)
    sockets_idle_end: Counter[str] = field(default_factory=Counter)
    sockets_closed: Counter[str] = field(default_factory=Counter)
    in_flight_end: int = 0
    busy_end: int = 0
    llama_running_end: dict[str, int | None] = field(default_factory=dict)
    seconds: float = 0.0
    expected: Expected = field(default_factory=Expected)


def router_config(backends: Backends) -> dict[str, Any]:
    """One router: `local` (llama1, then llama2) ⇄ `mock` (f1, then f2), state and cache in redis."""
    redis_url = backends.redis.url
    return {
        "backends": {
            **{n: {"provider": "llamacpp", "base_url": s.base_url} for n, s in backends.llama.items()},
            **{n: {"provider": "openai", "base_url": backends.fault.base_url(n), "api_key": "k"} for n in TEXTS},
        },
        "models": {
            "local": {
                "deployments": [{"backend": "llama1", "model": MODEL}, {"backend": "llama2", "model": MODEL}],
                "fallbacks": ["mock"],
            },
            "mock": {
                "deployments": [{"backend": "f1", "model": "m"}, {"backend": "f2", "model": "m"}],
                "fallbacks": ["local"],
            },
        },
        "policy": "ordered",
        "timeouts": {"connect_s": 1.0, "first_token_s": 3.0, "stall_s": 2.0, "total_s": DEADLINE_S},
        "retry": {"max_retry_after_s": 2.0},
        "state": {"backend": "redis", "url": redis_url, "refresh_s": 0.25},
        "cache": {"backend": "redis", "url": redis_url, "ttl_s": 600},
        "load_probes": {"interval_s": 0.5, "timeout_s": 0.5},
    }


async def soak(args: argparse.Namespace, backends: Backends) -> Soak:
    import router as rt

    global _T0
    result = Soak(Tally(backends.timeline))
    expected = result.expected = await read_expected(backends)
    rng = random.Random(args.seed)
    async with rt.AsyncRouter.from_config(router_config(backends)) as router:
        for i in range(32):  # warm up: pools, the cache's first entries, the first TTFT samples
            await one_call(router, draw(rng, -i), expected, time.monotonic())
        await anyio.sleep(1.0)
        result.rss_start, result.sockets_start = rss_mb(), sockets_to(backends.ports())
        _T0 = time.monotonic()
        until = args.minutes * 60.0
        counter = iter(range(10**9))

        async def worker() -> None:
            while _now() < until:
                result.tally.add(await one_call(router, draw(rng, next(counter)), expected, _T0), expected)

        async def progress() -> None:
            while _now() < until:
                await anyio.sleep(30.0)
                if not result.rss_minute and _now() >= 60.0:
                    result.rss_minute = rss_mb()
                tally = result.tally
                print(
                    f"  {_now():5.0f}s {tally.calls} calls, {tally.ok} ok, rss {rss_mb():.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(backends.drive, _now, until)
            tg.start_soon(progress)
            tg.start_soon(backends.forget, _now, until)
            for _ in range(args.concurrency):
                tg.start_soon(worker)
        result.seconds = _now()
        await anyio.sleep(3.0)  # idle: whatever is still held now is leaked
        await router.probe_load()
        health = await router.health()
        result.in_flight_end = sum(h.in_flight for h in health)
        result.llama_running_end = {h.backend: h.server_running for h in health if h.backend in backends.llama}
        result.busy_end = backends.fault.busy_connections()
        result.sockets_idle_end = sockets_to(backends.ports())
        result.rss_end = rss_mb()
    await anyio.sleep(0.5)
    result.sockets_closed = sockets_to(backends.ports())
    return result


# --- the scorecard ----------------------------------------------------------------------------


def back_on_llama1(t: Tally, timeline: Timeline) -> list[float]:
    """For each restart of llama1: seconds until a call begun after it was served by it."""
    out = []
    for _, up in timeline.down.get("llama1", []):
        later = [started for started in t.llama1_starts if started >= up]
        if up != float("inf") and later:
            out.append(min(later) - up)
    return out


def scorecard(s: Soak, backends: Backends, args: argparse.Namespace) -> int:
    """Print the scorecard; the number of must-be-zero lines that are not."""
    t = s.tally
    errors = Counter({r: n for r, n in t.results.items() if r not in ("ok", "hung") and not r.startswith("unclean")})
    unclean = Counter({r: n for r, n in t.results.items() if r.startswith("unclean")})
    p = sorted(t.latencies)
    failing = 0

    def must_be_zero(label: str, value: int, detail: str = "") -> None:
        nonlocal failing
        failing += value != 0
        mark = "✓" if value == 0 else "✗"
        print(f"  {label:<58} {value:>8}  {mark} {detail}")

    print()
    print(
        f"Soak scorecard: {s.seconds / 60:.1f} min, concurrency {args.concurrency}, seed {args.seed}, "
        f"one router, redis-server state and cache"
    )
    print(f"  {'calls':<58} {t.calls:>8}  ({t.calls / max(s.seconds, 1e-9):.0f}/s)")
    print(f"  {'  by kind':<58} " + ", ".join(f"{k} {n}" for k, n in t.kinds.items()))
    print(f"  {'successes':<58} {t.ok:>8}  ({t.ok / max(t.calls, 1):.1%})")
    print(f"  {'  served by':<58} " + ", ".join(f"{k} {n}" for k, n in t.served.most_common()))
    if p:
        print(
            f"  {'  latency p50 / p99 / max (s)':<58} {p[len(p) // 2]:.3f} / {p[int(len(p) * 0.99)]:.3f} / {p[-1]:.3f}"
        )
    print(f"  {'  checked against the exact expected text':<58} {t.exact:>8}  (the rest: length + finish_reason)")
    print(f"  {'clean errors (openai.APIError subclasses)':<58} {sum(errors.values()):>8}")
    for name, n in errors.most_common():
        print(f"  {'  ' + name:<58} {n:>8}")
    must_be_zero("errors that are not openai.APIError", sum(unclean.values()), "; ".join(unclean)[:200])
    must_be_zero(f"calls hung past their deadline (+{GRACE_S:g}s)", t.results["hung"])
    print(f"  {'  calls that ended more than 1 s past their deadline':<58} {t.late:>8}")
    must_be_zero("answers truncated yet returned as success", t.problems["truncated"])
    must_be_zero("duplicated or out-of-order text (streams, partial texts)", t.problems["garbled"])
    must_be_zero("router in-flight requests left (idle, 3 s after)", s.in_flight_end)
    must_be_zero("fault-server connections still busy", s.busy_end)
    running = sum(v or 0 for v in s.llama_running_end.values())
    must_be_zero("llama.cpp requests still running (/metrics, /slots)", running, str(s.llama_running_end))
    must_be_zero(
        "router sockets to backends and redis after close", sum(s.sockets_closed.values()), str(dict(s.sockets_closed))
    )
    print(
        f"  {'  pooled sockets while idle: start → end':<58} "
        f"{sum(s.sockets_start.values())} → {sum(s.sockets_idle_end.values())}  "
        f"({dict(s.sockets_start)} → {dict(s.sockets_idle_end)})"
    )
    growth = s.rss_end - s.rss_start
    print(
        f"  {'RSS start → end (MB)':<58} {s.rss_start:.0f} → {s.rss_end:.0f}  "
        f"({growth:+.0f} MB, {growth / s.rss_start:+.0%})"
    )
    if s.rss_minute and s.seconds > 90:
        slope = (s.rss_end - s.rss_minute) / ((s.seconds - 60.0) / 60.0)
        print(f"  {'  after the first minute (MB per minute)':<58} {slope:+8.1f}  ({s.rss_minute:.0f} at 1 min)")
    for label, key in (("while up", "up"), ("while up ≥ 10 s", "settled")):
        won, of = t.preferred[key + "_won"], t.preferred[key]
        share = f"{won / of:.1%}" if of else "n/a"
        print(f"  {'preferred backend (llama1) share of local calls ' + label:<58} {share:>8}  ({won}/{of})")
    returns = back_on_llama1(t, backends.timeline)
    print(
        f"  {'seconds from llama1 up again to a call it served':<58} "
        + (", ".join(f"{r:.1f}" for r in returns) if returns else "n/a")
    )
    kills = Counter(e.split()[1] for e in backends.timeline.events if e.endswith("SIGKILL"))
    faults = Counter(e.split()[2] for e in backends.timeline.events if " f1 " in e and not e.endswith("healthy"))
    print(f"  {'driver: SIGKILLs':<58} " + ", ".join(f"{k} ×{n}" for k, n in sorted(kills.items())))
    print(f"  {'driver: f1 fault windows':<58} " + ", ".join(f"{k} ×{n}" for k, n in sorted(faults.items())))
    for sample in t.samples:
        print(f"  problem call: {sample}")
    print(f"must-be-zero lines not zero: {failing}")
    return failing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    parser.add_argument("--concurrency", type=int, default=64, help="callers at once (default 64)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1:
        parser.error("--minutes must be positive and --concurrency at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("router").addHandler(logging.NullHandler())
    logging.getLogger("router").propagate = False
    rng = random.Random(args.seed + 1)
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        backends = Backends(Path(workdir), rng)
        try:
            backends.start()
            result = asyncio.run(soak(args, backends))
        finally:
            backends.close()
        print(
            "driver events:",
            "; ".join(backends.timeline.events[:14]),
            "…" if len(backends.timeline.events) > 14 else "",
        )
        return 1 if scorecard(result, backends, args) else 0


if __name__ == "__main__":
    sys.exit(main())
