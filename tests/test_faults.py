"""The router against real misbehaving servers on loopback (`tests/fault_server.py`).

Every test scripts the backends, makes real HTTP calls through `AsyncRouter` (or the sync
`Router`), and checks three things: a bounded wall time, the attempts each backend saw (the
fault server's own log *and* the route record), and what the caller got. The fixture then
checks that the server saw no internal error and that no connection was left open once the
router closed.

Layout: backends `a`, `b`, `c` on their own ports; alias `primary` = a/m1, falling back to
alias `backup` = b/m2 (`config()` takes other `models`). The deadlines a scenario waits for are
hundreds of ms (`FIRST_TOKEN_S`, `STALL_S`), so the whole file runs in a few seconds.

To add a scenario:
1. if no behaviour fits, add a frozen dataclass subclassing `Behaviour` (or `Ok`, overriding its
   `before_token` / `end` / `complete` hooks) and a factory in `fault_server.py`;
2. write `async def test_…(server)`: `server.script("a", [behaviour, …])` (a list is consumed one
   per request, its last item repeating; a function `(n, t, body) -> behaviour` scripts by request
   number or time), build a router from `config(server, …)`, time the call with `time.perf_counter()`;
3. assert the wall time against the deadline involved plus `SLACK`, `server.count(name)` /
   `server.requests(name)` per backend, `seen(route)` and the caller's result or exception.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from router import (
    AsyncRouter,
    ContentFilteredError,
    ContextLengthExceededError,
    OverloadedError,
    RateLimitError,
    Router,
    StreamInterruptedError,
    route_of,
)
from router.path.record import RouteRecord
from tests.fault_server import (
    FaultServer,
    content_filter_400,
    context_400,
    continues_prefill,
    cut_after,
    down_for,
    malformed_after,
    no_done,
    ok,
    rejects_prefill,
    reset_before_headers,
    silent,
    slow_first_token,
    stall_after,
    status,
    tokens,
)

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
SLACK = 0.5
"""Allowance above the deadline a scenario is bounded by (a loaded 2-core machine is slow)."""
FIRST_TOKEN_S = 0.3
STALL_S = 0.3
TIMEOUTS = {"connect_s": 1.0, "first_token_s": 2.0, "stall_s": 2.0, "total_s": 10.0}
"""Generous, so a pause of the machine can't fail a scenario about something else; the scenarios
about a deadline set it small (`FIRST_TOKEN_S`, `STALL_S`) and bound their wall time by it."""
RETRY = {
    "attempts_per_deployment": 2,
    "max_attempts": 6,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "max_retry_after_s": 1.0,
}
TEXT = "alpha beta gamma delta epsilon"


@pytest.fixture(scope="module", autouse=True)
def _collected() -> None:
    """Collect what earlier test modules left (e.g. a 10k-request load test) before the timed scenarios."""
    gc.collect()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """Backends a, b, c answering ok until a test scripts them; checks for leaks afterwards."""
    with FaultServer(max_hold_s=10.0, a=ok("from a"), b=ok("from b"), c=ok("from c")) as fault:
        yield fault
        assert fault.errors == []
        assert fault.wait_closed(timeout=2.0), f"connections left open: {fault.open_connections()}"


def config(
    server: FaultServer,
    *,
    models: dict[str, Any] | None = None,
    timeouts: dict[str, float] | None = None,
    retry: dict[str, Any] | None = None,
    providers: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    kinds = providers or {}
    backends = {
        name: {"provider": kinds.get(name, "openai"), "base_url": server.base_url(name), "api_key": f"key-{name}"}
        for name in server.names
    }
    return {
        "backends": backends,
        "models": models
        or {
            "primary": {"deployments": [{"backend": "a", "model": "m1"}], "fallbacks": ["backup"]},
            "backup": {"deployments": [{"backend": "b", "model": "m2"}]},
        },
        "timeouts": {**TIMEOUTS, **(timeouts or {})},
        "retry": {**RETRY, **(retry or {})},
        **extra,
    }


def seen(route: RouteRecord) -> list[tuple[str, str]]:
    """The route record's attempts as (backend, outcome)."""
    return [(a.backend, a.outcome) for a in route.attempts]


def counts(server: FaultServer) -> dict[str, int]:
    """How many chat requests each backend saw."""
    return {name: server.count(name) for name in server.names}


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def collect(stream: AsyncIterator[ChatCompletionChunk], into: list[ChatCompletionChunk]) -> None:
    async for chunk in stream:
        into.append(chunk)


# --- rate limits --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_short_retry_after_waits_then_retries_the_same_backend(server: FaultServer) -> None:
    server.script("a", [status(429, retry_after_ms=250), ok("from a")])
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert 0.25 <= wall < 0.25 + SLACK
    assert reply.choices[0].message.content == "from a"
    assert counts(server) == {"a": 2, "b": 0, "c": 0}
    first, second = server.requests("a")
    assert second.at - first.at >= 0.24, "the retry did not wait for Retry-After"
    route = route_of(reply)
    assert seen(route) == [("a", "rate_limited"), ("a", "ok")]
    assert route.attempts[0].status_code == 429 and route.attempts[0].retry_after_s == pytest.approx(0.25)
    assert route.fallback is None


@pytest.mark.anyio
async def test_429_long_retry_after_falls_over_at_once(server: FaultServer) -> None:
    server.script("a", status(429, retry_after=600))
    models = {"primary": {"deployments": [{"backend": "a", "model": "m1"}, {"backend": "b", "model": "m1"}]}}
    async with AsyncRouter.from_config(config(server, models=models)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
        again = await router.chat.completions.create(model="primary", messages=HI)
    assert wall < SLACK
    assert reply.choices[0].message.content == "from b"
    assert seen(route_of(reply)) == [("a", "rate_limited"), ("b", "ok")]
    assert route_of(reply).attempts[0].retry_after_s == 600
    # the second call, well inside the 600 s, does not provoke another 429 from a
    assert seen(route_of(again)) == [("b", "ok")]
    assert counts(server) == {"a": 1, "b": 2, "c": 0}


@pytest.mark.anyio
async def test_429_retry_hint_in_groq_message_falls_over_at_once(server: FaultServer) -> None:
    groq_body = {
        "error": {
            "message": "Rate limit reached for model `openai/gpt-oss-120b` in organization `org_1` service tier "
            "`on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. "
            "Please try again in 9m38.016s.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    server.script("a", status(429, body=groq_body))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 1, "b": 1, "c": 0}
    route = route_of(reply)
    assert seen(route) == [("a", "rate_limited"), ("b", "ok")]
    assert route.attempts[0].retry_after_s == pytest.approx(578.016)
    assert route.fallback == "backup"


@pytest.mark.anyio
async def test_429_without_retry_after_is_retried_with_backoff_then_falls_over(server: FaultServer) -> None:
    server.script("a", status(429))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 1, "c": 0}  # attempts_per_deployment, then the fallback
    route = route_of(reply)
    assert seen(route) == [("a", "rate_limited"), ("a", "rate_limited"), ("b", "ok")]
    assert all(a.retry_after_s is None for a in route.attempts)
    assert reply.choices[0].message.content == "from b"


@pytest.mark.anyio
async def test_every_candidate_rate_limited_raises_rate_limit_error_with_the_shortest_wait(
    server: FaultServer,
) -> None:
    server.script("a", status(429, retry_after=120))
    server.script("b", status(429, retry_after=60))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    error = caught.value
    assert isinstance(error, RateLimitError) and error.status_code == 429 and error.retry_after == 60
    assert counts(server) == {"a": 1, "b": 1, "c": 0}
    assert [(a.backend, a.outcome) for a in error.attempts] == [("a", "rate_limited"), ("b", "rate_limited")]


# --- server errors --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_500_once_then_ok_is_retried_on_the_same_backend(server: FaultServer) -> None:
    server.script("a", [status(500), ok("from a")])
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 0, "c": 0}
    route = route_of(reply)
    assert seen(route) == [("a", "server_error"), ("a", "ok")]
    assert route.attempts[0].status_code == 500
    assert reply.choices[0].message.content == "from a" and route.backend == "a"


@pytest.mark.anyio
async def test_503_persistent_falls_over_after_bounded_attempts(server: FaultServer) -> None:
    server.script("a", status(503))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 1, "c": 0}
    route = route_of(reply)
    assert seen(route) == [("a", "overloaded"), ("a", "overloaded"), ("b", "ok")]
    assert route.backend == "b" and route.fallback == "backup"


@pytest.mark.anyio
async def test_503_everywhere_raises_overloaded_within_max_attempts(server: FaultServer) -> None:
    for name in ("a", "b", "c"):
        server.script(name, status(503))
    deployments = [{"backend": name, "model": "m1"} for name in ("a", "b", "c")]
    cfg = config(server, models={"primary": {"deployments": deployments}}, retry={"max_attempts": 3})
    async with AsyncRouter.from_config(cfg) as router:
        started = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 1, "c": 0}  # max_attempts=3 stops it before c
    error = caught.value
    assert isinstance(error, OverloadedError) and error.status_code == 503
    assert [(a.backend, a.outcome) for a in error.attempts] == [
        ("a", "overloaded"),
        ("a", "overloaded"),
        ("b", "overloaded"),
    ]
    assert "engine is currently busy" in str(error)


# --- connections and silence -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_reset_before_headers_is_retried_then_falls_over(server: FaultServer, stream: bool) -> None:
    server.script("a", reset_before_headers())
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI, stream=stream)
        if stream:
            chunks: list[ChatCompletionChunk] = []
            await collect(reply, chunks)  # type: ignore[arg-type]
            assert text_of(chunks) == "from b"
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 1, "c": 0}
    assert seen(route_of(reply)) == [("a", "connection"), ("a", "connection"), ("b", "ok")]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_silent_backend_costs_one_first_token_deadline_then_falls_over(server: FaultServer, stream: bool) -> None:
    server.script("a", silent())
    async with AsyncRouter.from_config(config(server, timeouts={"first_token_s": FIRST_TOKEN_S})) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI, stream=stream)
        if stream:
            chunks: list[ChatCompletionChunk] = []
            await collect(reply, chunks)  # type: ignore[arg-type]
            assert text_of(chunks) == "from b"
        wall = time.perf_counter() - started
        # the router hung up on the silent backend: nothing is left waiting there
        assert await server.await_closed("a", timeout=0.5, busy_only=True)
    assert FIRST_TOKEN_S <= wall < FIRST_TOKEN_S + SLACK
    assert counts(server) == {"a": 1, "b": 1, "c": 0}, "a silent backend must not be retried"
    route = route_of(reply)
    assert seen(route) == [("a", "timeout"), ("b", "ok")]
    assert route.attempts[0].seconds == pytest.approx(FIRST_TOKEN_S, abs=0.15)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_slow_first_token_within_the_deadline_is_waited_for(server: FaultServer, stream: bool) -> None:
    server.script("a", slow_first_token(0.15, TEXT))
    async with AsyncRouter.from_config(config(server, timeouts={"first_token_s": 0.5})) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI, stream=stream)
        if stream:
            chunks: list[ChatCompletionChunk] = []
            await collect(reply, chunks)  # type: ignore[arg-type]
            assert text_of(chunks) == TEXT
        else:
            assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content == TEXT
        wall = time.perf_counter() - started
    assert 0.15 <= wall < 0.15 + SLACK
    assert counts(server) == {"a": 1, "b": 0, "c": 0}
    route = route_of(reply)
    assert seen(route) == [("a", "ok")] and route.complete
    if stream:
        assert route.ttft_s is not None and route.ttft_s >= 0.14


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_slow_first_token_over_the_deadline_falls_over(server: FaultServer, stream: bool) -> None:
    server.script("a", slow_first_token(2.0, TEXT))
    async with AsyncRouter.from_config(config(server, timeouts={"first_token_s": FIRST_TOKEN_S})) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI, stream=stream)
        if stream:
            chunks: list[ChatCompletionChunk] = []
            await collect(reply, chunks)  # type: ignore[arg-type]
            assert text_of(chunks) == "from b"
        wall = time.perf_counter() - started
        assert await server.await_closed("a", timeout=0.5, busy_only=True)
    assert FIRST_TOKEN_S <= wall < FIRST_TOKEN_S + SLACK
    assert counts(server) == {"a": 1, "b": 1, "c": 0}
    assert seen(route_of(reply)) == [("a", "timeout"), ("b", "ok")]


# --- broken streams -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_cut_mid_answer_raises_with_the_partial_text(server: FaultServer) -> None:
    server.script("a", cut_after(3, TEXT))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(StreamInterruptedError) as caught:
            await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    partial = "".join(tokens(TEXT)[:3])
    error = caught.value
    assert isinstance(error, openai.APIError)
    assert error.partial_text == partial == text_of(chunks) == "alpha beta gamma"
    assert "cut" in str(error)
    assert counts(server) == {"a": 1, "b": 0, "c": 0}  # committed at the first token: no fall-over
    route = route_of(stream)
    assert seen(route) == [("a", "stream_broken")] and route.complete
    assert [(a.backend, a.outcome) for a in error.attempts] == [("a", "stream_broken")]


@pytest.mark.anyio
async def test_stream_broken_before_the_first_token_falls_over_invisibly(server: FaultServer) -> None:
    server.script("a", cut_after(0, TEXT))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert text_of(chunks) == "from b"
    assert counts(server) == {"a": 2, "b": 1, "c": 0}
    assert seen(route_of(stream)) == [("a", "stream_broken"), ("a", "stream_broken"), ("b", "ok")]


@pytest.mark.anyio
@pytest.mark.parametrize("keepalive_every", [None, 0.05], ids=["quiet", "keep-alives"])
async def test_stall_mid_stream_raises_within_stall_s(server: FaultServer, keepalive_every: float | None) -> None:
    server.script("a", stall_after(2, 5.0, TEXT, keepalive_every=keepalive_every))
    async with AsyncRouter.from_config(config(server, timeouts={"stall_s": STALL_S})) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(StreamInterruptedError, match="stalled") as caught:
            await collect(stream, chunks)
        wall = time.perf_counter() - started
        assert await server.await_closed("a", timeout=0.5, busy_only=True)  # not left stalling for 5 s
    assert STALL_S <= wall < STALL_S + SLACK
    assert caught.value.partial_text == "alpha beta" == text_of(chunks)
    assert counts(server) == {"a": 1, "b": 0, "c": 0}
    assert seen(route_of(stream)) == [("a", "stream_broken")]


@pytest.mark.anyio
async def test_malformed_event_mid_stream_raises_with_the_partial_text(server: FaultServer) -> None:
    server.script("a", malformed_after(2, TEXT))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(StreamInterruptedError, match="malformed") as caught:
            await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert caught.value.partial_text == "alpha beta" == text_of(chunks)
    assert counts(server) == {"a": 1, "b": 0, "c": 0}
    assert seen(route_of(stream)) == [("a", "stream_broken")]


@pytest.mark.anyio
async def test_malformed_body_without_stream_is_a_server_error_and_falls_over(server: FaultServer) -> None:
    server.script("a", malformed_after(0, TEXT))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert counts(server) == {"a": 2, "b": 1, "c": 0}
    assert seen(route_of(reply)) == [("a", "server_error"), ("a", "server_error"), ("b", "ok")]


@pytest.mark.anyio
@pytest.mark.parametrize("include_usage", [True, False], ids=["usage-asked", "usage-not-asked"])
async def test_stream_without_done_finishes_promptly_and_complete(server: FaultServer, include_usage: bool) -> None:
    server.script("a", no_done(TEXT, hold_s=5.0, usage=(9, 5)))
    options = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True, stream_options=options)
        chunks: list[ChatCompletionChunk] = []
        await collect(stream, chunks)
        wall = time.perf_counter() - started
        assert await server.await_closed("a", timeout=0.5, busy_only=True)  # the router hung up
    assert wall < SLACK, "waited for a [DONE] that never comes"
    assert text_of(chunks) == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 14
    else:
        assert all(c.choices for c in chunks)
    assert server.requests("a")[0].body["stream_options"] == {"include_usage": True}  # asked upstream regardless
    route = route_of(stream)
    assert route.complete and seen(route) == [("a", "ok")]
    assert route.usage is not None and (route.usage.prompt_tokens, route.usage.completion_tokens) == (9, 5)


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["cut", "malformed"])
async def test_buffered_stream_breaking_mid_answer_falls_over_invisibly(server: FaultServer, fault: str) -> None:
    server.script("a", cut_after(3, TEXT) if fault == "cut" else malformed_after(3, TEXT))
    async with AsyncRouter.from_config(config(server, streams={"commit": "buffer"})) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert text_of(chunks) == "from b", "the caller saw none of a's partial answer"
    assert counts(server) == {"a": 2, "b": 1, "c": 0}  # a break before the commit is retried once, then falls over
    route = route_of(stream)
    assert seen(route) == [("a", "stream_broken"), ("a", "stream_broken"), ("b", "ok")]
    assert route.fallback == "backup" and route.complete


@pytest.mark.anyio
async def test_adaptive_first_token_deadline_abandons_a_fast_backend_gone_quiet(server: FaultServer) -> None:
    warm_up = 10  # the router adapts once it has 8 samples
    server.script("a", [*[ok("from a")] * warm_up, silent()])
    adaptive = {"first_token_s": 2.0, "adaptive_floor_s": 0.1, "adaptive_factor": 3.0}
    async with AsyncRouter.from_config(config(server, timeouts=adaptive)) as router:
        for _ in range(warm_up):  # a answers in a few ms: its deadline adapts down to the floor
            warm = await router.chat.completions.create(model="primary", messages=HI, stream=True)
            await collect(warm, [])  # a stream's TTFT is recorded when it ends
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert 0.1 <= wall < 0.1 + SLACK, "the configured 2 s first-token deadline was used"
    assert text_of(chunks) == "from b"
    assert counts(server) == {"a": warm_up + 1, "b": 1, "c": 0}
    assert seen(route_of(stream)) == [("a", "timeout"), ("b", "ok")]


def recovering(server: FaultServer) -> dict[str, Any]:
    """primary = a/m1 then v/m1, v a vLLM server (prefill-capable); streams continue after a break."""
    models = {"primary": {"deployments": [{"backend": "a", "model": "m1"}, {"backend": "v", "model": "m1"}]}}
    return config(
        server,
        models=models,
        providers={"v": "vllm"},
        streams={"recover": "continue"},
        load_probes={"enabled": False},
    )


@pytest.mark.anyio
async def test_stream_cut_mid_answer_is_continued_by_a_prefill_capable_backend(server: FaultServer) -> None:
    server.add("v", continues_prefill(TEXT, flag="continue_final_message"))
    server.script("a", cut_after(3, TEXT))
    async with AsyncRouter.from_config(recovering(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert text_of(chunks) == TEXT, "the caller gets one seamless answer"
    assert counts(server) == {"a": 1, "b": 0, "c": 0, "v": 1}
    continued = server.requests("v")[0]
    assert continued.messages[-1] == {"role": "assistant", "content": "alpha beta gamma"}
    assert continued.body["continue_final_message"] is True and continued.stream
    route = route_of(stream)
    assert seen(route) == [("a", "stream_broken"), ("v", "ok")] and route.complete
    assert route.recovered_after_chars == len("alpha beta gamma")


@pytest.mark.anyio
async def test_stream_cut_with_the_prefill_rejected_raises_the_original_failure(server: FaultServer) -> None:
    server.add("v", rejects_prefill(ok("from v")))
    server.script("a", cut_after(3, TEXT))
    async with AsyncRouter.from_config(recovering(server)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(StreamInterruptedError, match="cut") as caught:
            await collect(stream, chunks)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert caught.value.partial_text == "alpha beta gamma" == text_of(chunks)
    assert counts(server) == {"a": 1, "b": 0, "c": 0, "v": 1}  # the continuation was asked for once
    assert server.requests("v")[0].messages[-1]["role"] == "assistant"
    assert seen(route_of(stream)) == [("a", "stream_broken"), ("v", "bad_request")]


# --- requests no backend can serve --------------------------------------------------------


@pytest.mark.anyio
async def test_context_length_400_is_not_retried_on_the_same_deployment(server: FaultServer) -> None:
    server.script("a", context_400())
    server.script("b", context_400())
    models = {
        "primary": {
            "deployments": [{"backend": "a", "model": "m1"}, {"backend": "c", "model": "m1"}],
            "fallbacks": ["backup"],
        },
        "backup": {"deployments": [{"backend": "b", "model": "m2"}]},
    }
    async with AsyncRouter.from_config(config(server, models=models)) as router:
        started = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    error = caught.value
    assert isinstance(error, ContextLengthExceededError) and error.status_code == 400
    # a once (no retry), c not at all (the same model: the same window), b (another model) once
    assert counts(server) == {"a": 1, "b": 1, "c": 0}
    assert [(a.backend, a.outcome) for a in error.attempts] == [("a", "context_too_long"), ("b", "context_too_long")]
    assert error.route is not None
    assert any(e.candidate == "c/m1" and "context window" in e.reason for e in error.route.excluded)


@pytest.mark.anyio
async def test_content_filter_400_is_surfaced_at_once(server: FaultServer) -> None:
    server.script("a", content_filter_400())
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
    assert wall < SLACK
    error = caught.value
    assert isinstance(error, ContentFilteredError) and error.status_code == 400
    assert "content management policy" in str(error)
    assert counts(server) == {"a": 1, "b": 0, "c": 0}, "a content refusal must not be shopped around"
    assert [(a.backend, a.outcome) for a in error.attempts] == [("a", "content_filtered")]


@pytest.mark.anyio
async def test_prefill_rejected_by_the_primary_falls_over(server: FaultServer) -> None:
    server.script("a", rejects_prefill(ok("from a")))
    prefill: list[ChatCompletionMessageParam] = [*HI, {"role": "assistant", "content": "Sure, here"}]
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        plain = await router.chat.completions.create(model="primary", messages=HI)
        reply = await router.chat.completions.create(model="primary", messages=prefill)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert route_of(plain).backend == "a"
    assert seen(route_of(reply)) == [("a", "bad_request"), ("b", "ok")]
    assert counts(server) == {"a": 2, "b": 1, "c": 0}
    assert server.requests("b")[0].messages[-1] == {"role": "assistant", "content": "Sure, here"}


# --- over time and across aliases ---------------------------------------------------------


@pytest.mark.anyio
async def test_primary_down_for_a_window_then_healthy(server: FaultServer) -> None:
    window = 0.6
    circuit = {"failures": 3, "cooldown_s": 0.15, "max_cooldown_s": 0.3}
    calls: list[tuple[float, float, RouteRecord]] = []
    async with AsyncRouter.from_config(config(server, circuit=circuit)) as router:
        server.script("a", down_for(window, status(503), ok("from a")))
        started = time.perf_counter()
        while server.now("a") < window + circuit["max_cooldown_s"] + 0.4:
            begun = server.now("a")
            reply = await router.chat.completions.create(model="primary", messages=HI)
            calls.append((begun, server.now("a"), route_of(reply)))
            await anyio.sleep(0.04)
        wall = time.perf_counter() - started
    assert wall < window + circuit["max_cooldown_s"] + 0.4 + SLACK
    during = [route for begun, ended, route in calls if ended < window]
    after = [route for begun, ended, route in calls if begun > window + circuit["max_cooldown_s"] + 0.05]
    assert len(during) >= 4 and len(after) >= 2
    for route in during:  # every call succeeded, from the fallback while a was down
        assert route.backend == "b" and route.fallback == "backup"
        assert seen(route)[-1] == ("b", "ok")
        assert all(outcome in ("overloaded", "circuit_open") for _, outcome in seen(route)[:-1])
    for route in after:  # and from the primary once it was back
        assert route.backend == "a" and route.fallback is None and seen(route) == [("a", "ok")]
    down_requests = [r for r in server.requests("a") if r.at < window]
    # the circuit opens after `failures` 503s and lets one probe through per cooldown:
    # a down primary sees a handful of requests, not two per call
    probes = int(window / circuit["cooldown_s"]) + 1
    assert len(down_requests) <= circuit["failures"] + probes < 2 * len(during)
    assert server.count("b") >= len(during)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_fallback_accounting(server: FaultServer, stream: bool) -> None:
    server.script("a", status(500))
    server.script("b", ok("answer from the fallback", usage=(11, 7)))
    async with AsyncRouter.from_config(config(server)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI, stream=stream)
        if stream:
            chunks: list[ChatCompletionChunk] = []
            await collect(reply, chunks)  # type: ignore[arg-type]
            assert text_of(chunks) == "answer from the fallback"
        else:
            assert isinstance(reply, ChatCompletion) and reply.usage is not None
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 7)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert [r.model for r in server.requests("a")] == ["m1", "m1"]
    assert [r.model for r in server.requests("b")] == ["m2"]
    route = route_of(reply)
    assert route.requested_model == "primary" and route.alias == "primary" and route.fallback == "backup"
    assert (route.backend, route.model) == ("b", "m2")
    assert [(a.backend, a.model, a.outcome, a.status_code) for a in route.attempts] == [
        ("a", "m1", "server_error", 500),
        ("a", "m1", "server_error", 500),
        ("b", "m2", "ok", None),
    ]
    assert route.usage is not None
    assert (route.usage.prompt_tokens, route.usage.completion_tokens, route.usage.total_tokens) == (11, 7, 18)
    assert "(fallback backup)" in route.summary() and route.complete


# --- the sync client ----------------------------------------------------------------------


def test_sync_silent_backend_falls_over(server: FaultServer) -> None:
    server.script("a", silent())
    with Router.from_config(config(server, timeouts={"first_token_s": FIRST_TOKEN_S})) as router:
        started = time.perf_counter()
        reply = router.chat.completions.create(model="primary", messages=HI)
        wall = time.perf_counter() - started
        assert server.wait_closed("a", timeout=0.5, busy_only=True)
    assert FIRST_TOKEN_S <= wall < FIRST_TOKEN_S + SLACK
    assert reply.choices[0].message.content == "from b"
    assert counts(server) == {"a": 1, "b": 1, "c": 0}
    assert seen(route_of(reply)) == [("a", "timeout"), ("b", "ok")]


def test_sync_stream_cut_mid_answer(server: FaultServer) -> None:
    server.script("a", cut_after(3, TEXT))
    with Router.from_config(config(server)) as router:
        started = time.perf_counter()
        stream = router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks: list[ChatCompletionChunk] = []
        with pytest.raises(StreamInterruptedError) as caught:
            for chunk in stream:
                chunks.append(chunk)
        wall = time.perf_counter() - started
    assert wall < SLACK
    assert caught.value.partial_text == "alpha beta gamma" == text_of(chunks)
    assert counts(server) == {"a": 1, "b": 0, "c": 0}
    assert seen(route_of(stream)) == [("a", "stream_broken")]


# --- garbage ----------------------------------------------------------------------------------

_OURS = ("router.", "providers.", "policies.", "tenacity")


@pytest.mark.anyio
async def test_calls_that_succeed_leave_no_reference_cycles(server: FaultServer) -> None:
    """A call that succeeds is freed by reference counting alone. Cycles left per call pile up until
    the collector's full pass, a pause of tens of ms that lands in every call in flight — and in the
    latency samples `fastest` ranks by (at concurrency 32 it moved a third of the traffic off the
    fastest backend). A call that failed over may leave cycles (its exceptions hold tracebacks)."""
    async with AsyncRouter.from_config(config(server)) as router:
        for _ in range(3):  # warm: connections, caches, lazily built tables
            await router.chat.completions.create(model="primary", messages=HI)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                reply = await router.chat.completions.create(model="primary", messages=HI)
                assert reply.choices[0].message.content == "from a"
                chunks = [
                    c async for c in await router.chat.completions.create(model="primary", messages=HI, stream=True)
                ]
                assert text_of(chunks) == "from a"
            gc.collect()
            ours = [type(o) for o in gc.garbage if type(o).__module__.startswith(_OURS)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert ours == [], (
        f"{len(ours)} objects of ours in reference cycles after 40 calls: {sorted({t.__qualname__ for t in ours})}"
    )
