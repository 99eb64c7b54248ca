"""Observability end to end: hooks, observers, OpenTelemetry, Prometheus, usage and cost, through real calls.

Every test drives `AsyncRouter.chat.completions.create` against respx-mocked backends and reads
what a user would: the hook events in order, each attempt started and ended exactly once (hedges
and stream recovery included), the spans a tracer exported, the Prometheus exposition, the usage
totals in memory and in the SQLite file, and what each answer cost, hand-computed from the mocked
usage and the configured (or published) prices.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from router.client import AsyncRouter
from router.errors import InternalServerError, StreamInterruptedError
from router.observe.otel import OTelObserver
from router.observe.usage import UsageRow, read_usage
from router.path.events import EVENT_KINDS, CallInfo, Event, Observer
from router.path.record import Attempt, route_of

pytestmark = pytest.mark.anyio

A = "http://a.test/v1/chat/completions"
B = "http://b.test/v1/chat/completions"
DEEPSEEK = "https://api.deepseek.com/chat/completions"
HI = [{"role": "user", "content": "hi"}]

PRICE_A = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
"""No cached price: cached prompt tokens are billed at the input price."""
PRICE_B = {"input_per_mtok": 3.0, "output_per_mtok": 4.0, "cached_input_per_mtok": 0.5}


def config(**overrides: Any) -> dict[str, Any]:
    """Alias `chat`: model-a on backend a, then model-b on b (the `ordered` policy); one try per deployment."""
    base: dict[str, Any] = {
        "backends": {
            "a": {"provider": "openai", "base_url": "http://a.test/v1", "api_key": "key-a"},
            "b": {"provider": "openai", "base_url": "http://b.test/v1", "api_key": "key-b"},
        },
        "models": {
            "chat": {
                "deployments": [
                    {"backend": "a", "model": "model-a", "price": PRICE_A},
                    {"backend": "b", "model": "model-b", "price": PRICE_B},
                ]
            }
        },
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.0},
        "timeouts": {"first_token_s": 5, "stall_s": 5, "total_s": 10},
        "telemetry": {"otel": "off"},
    }
    base.update(overrides)
    return base


def with_model(cfg: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """`cfg` with extra settings on alias `chat` (hedge, …)."""
    cfg["models"]["chat"] = {**cfg["models"]["chat"], **settings}
    return cfg


def usage(prompt: int = 10, completion: int = 5, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI usage object; `cached` and `reasoning` go in the details, as OpenAI reports them."""
    counts: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        counts["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning:
        counts["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return counts


def completion(model: str, text: str = "hello", counts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage() if counts is None else counts,
    }


def ok(model: str, text: str = "hello", counts: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=completion(model, text, counts))


def fail(status: int = 500) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": "boom"}})


def chunk(model: str, *, delta: dict[str, Any] | None = None, finish: str | None = None) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(model: str, counts: dict[str, Any]) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": counts}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


Responder = Callable[[httpx.Request], httpx.Response]


def sse(
    model: str,
    pieces: list[str],
    *,
    counts: dict[str, Any] | None = None,
    finished: bool = True,
    delay_s: float = 0.0,
) -> Responder:
    """A fresh event stream per request: a role chunk, one chunk per piece, then (when `finished`) the
    finish, the usage and `[DONE]`; unfinished, the connection just closes (a cut stream)."""

    async def body() -> AsyncIterator[bytes]:
        if delay_s:
            await anyio.sleep(delay_s)
        yield chunk(model, delta={"role": "assistant"})
        for piece in pieces:
            yield chunk(model, delta={"content": piece})
        if finished:
            yield chunk(model, finish="stop")
            yield usage_chunk(model, usage(10, 2) if counts is None else counts)
            yield b"data: [DONE]\n\n"

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def in_turn(*replies: httpx.Response | Responder) -> Responder:
    """Answer successive requests with `replies`, in order (a callable builds a fresh response)."""
    queue = list(replies)

    def respond(request: httpx.Request) -> httpx.Response:
        reply = queue.pop(0)
        return reply if isinstance(reply, httpx.Response) else reply(request)

    return respond


def after(seconds: float, reply: httpx.Response | Responder) -> Any:
    """Answer after a pause (cancelled with the request when the router walks away)."""

    async def respond(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(seconds)
        return reply if isinstance(reply, httpx.Response) else reply(request)

    return respond  # respx awaits an async side effect


async def text_of(stream: Any) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def snapshot(event: Event) -> tuple[Any, ...]:
    """What a hook sees at the moment it is called (attempts and records keep changing afterwards)."""
    if event.kind == "attempt_start":
        assert event.attempt is not None
        return (event.kind, event.attempt.backend)
    if event.kind == "attempt_end":
        assert event.attempt is not None
        return (event.kind, event.attempt.backend, event.attempt.outcome, event.attempt.status_code)
    if event.kind == "fallback":
        return (event.kind, event.from_deployment, event.to_deployment)
    if event.kind == "circuit_change":
        assert event.circuit is not None
        return (event.kind, event.circuit.deployment, event.circuit.previous, event.circuit.state)
    return (event.kind,)


def record_all(router: AsyncRouter, into: list[tuple[Any, ...]], events: list[Event] | None = None) -> None:
    def hook(event: Event) -> None:
        into.append(snapshot(event))
        if events is not None:
            events.append(event)

    for kind in EVENT_KINDS:
        router.on(kind, hook)  # type: ignore[arg-type]


# --- 1. hooks ----------------------------------------------------------------------------------


async def test_hooks_tell_a_fallback_in_order_each_with_the_route_record(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(return_value=ok("model-b"))
    seen: list[tuple[Any, ...]] = []
    events: list[Event] = []
    async with AsyncRouter.from_config(config()) as router:
        record_all(router, seen, events)
        at_success: list[tuple[Any, ...]] = []
        router.on("success", lambda e: at_success.append((e.record.complete, e.record.backend, e.record.cost_usd)))  # type: ignore[union-attr]
        reply = await router.chat.completions.create(model="chat", messages=HI)
    assert reply.choices[0].message.content == "hello"
    assert seen == [
        ("call_start",),
        ("attempt_start", "a"),
        ("attempt_end", "a", "server_error", 500),
        ("fallback", "a/model-a", "b/model-b"),
        ("attempt_start", "b"),
        ("attempt_end", "b", "ok", None),
        ("success",),
    ]
    record = route_of(reply)
    assert all(event.record is record for event in events)  # the very record the caller gets
    tried = [event.attempt for event in events if event.attempt is not None]
    assert len(tried) == 4
    assert tried[0] is tried[1] is record.attempts[0] and tried[2] is tried[3] is record.attempts[1]
    # by `success` the record is final: who served and what it cost, (10 × $3 + 5 × $4) per million
    assert at_success == [(True, "b", pytest.approx(50e-6))]


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
async def test_failure_hook_gets_the_exception_the_caller_catches(httpx2_mock: respx.Router, stream: bool) -> None:
    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(return_value=fail(502))
    seen: list[tuple[Any, ...]] = []
    events: list[Event] = []
    async with AsyncRouter.from_config(config()) as router:
        record_all(router, seen, events)
        with pytest.raises(InternalServerError) as caught:
            await router.chat.completions.create(model="chat", messages=HI, stream=stream)
    assert [s[0] for s in seen] == [
        "call_start",
        "attempt_start",
        "attempt_end",
        "fallback",
        "attempt_start",
        "attempt_end",
        "failure",
    ]
    failure = events[-1]
    assert failure.error is caught.value  # the same object, not a copy or a wrapper
    assert failure.record is caught.value.route
    assert [(a.backend, a.outcome, a.status_code) for a in caught.value.attempts] == [
        ("a", "server_error", 500),
        ("b", "server_error", 502),
    ]


async def test_a_streamed_call_ends_its_attempt_and_succeeds_only_once_consumed(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse("model-a", ["Hel", "lo"], counts=usage(10, 2)))
    seen: list[tuple[Any, ...]] = []
    async with AsyncRouter.from_config(config()) as router:
        record_all(router, seen)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        assert seen == [("call_start",), ("attempt_start", "a")]  # the answer is still coming
        assert not route_of(stream).complete
        first = await stream.__anext__()
        assert first.choices[0].delta.role == "assistant"
        assert len(seen) == 2
        assert await text_of(stream) == "Hello"
        assert seen[2:] == [("attempt_end", "a", "ok", None), ("success",)]
        record = route_of(stream)
        assert record.complete and record.usage is not None and record.usage.completion_tokens == 2
        assert record.cost_usd == pytest.approx((10 * 1.0 + 2 * 2.0) / 1e6)

        # closed early by the caller: the attempt ends and the call counts as served, at the close
        seen.clear()
        early = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        await early.__anext__()
        assert seen == [("call_start",), ("attempt_start", "a")]
        await early.close()
        assert seen[2:] == [("attempt_end", "a", "ok", None), ("success",)]


async def test_a_stream_cut_after_the_commit_fails_with_the_exception_the_caller_catches(
    httpx2_mock: respx.Router,
) -> None:
    httpx2_mock.post(A).mock(side_effect=sse("model-a", ["Hel"], finished=False))
    seen: list[tuple[Any, ...]] = []
    events: list[Event] = []
    async with AsyncRouter.from_config(config()) as router:
        record_all(router, seen, events)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        with pytest.raises(StreamInterruptedError) as caught:
            await text_of(stream)
    assert seen == [("call_start",), ("attempt_start", "a"), ("attempt_end", "a", "stream_broken", None), ("failure",)]
    assert events[-1].error is caught.value and caught.value.partial_text == "Hel"


async def test_a_raising_hook_never_breaks_a_call(httpx2_mock: respx.Router, caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises on every kind: each call's answer is intact, later hooks and observers still
    run, and each exception is logged on the `router` logger."""
    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(side_effect=in_turn(ok("model-b", "intact"), sse("model-b", ["str", "eam"]), fail(500)))

    def explode(event: Event) -> None:
        raise RuntimeError(f"hook bug on {event.kind}")

    class Counter(Observer):
        def __init__(self) -> None:
            self.kinds: list[str] = []

        def call_started(self, call: CallInfo) -> None:
            self.kinds.append("call_start")

        def call_succeeded(self, call: CallInfo) -> None:
            self.kinds.append("success")

        def call_failed(self, call: CallInfo, error: BaseException) -> None:
            self.kinds.append("failure")

        def circuit_changed(self, change: Any) -> None:
            self.kinds.append("circuit_change")

    later: list[tuple[Any, ...]] = []
    counter = Counter()
    async with AsyncRouter.from_config(config(circuit={"failures": 1, "cooldown_s": 60})) as router:
        for kind in EVENT_KINDS:
            router.on(kind, explode)  # type: ignore[arg-type]
        record_all(router, later)  # registered after the raising one
        router.observers.add(counter)
        # a fails (its circuit opens) and b answers; then a is skipped; then b fails too
        reply = await router.chat.completions.create(model="chat", messages=HI)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        streamed = await text_of(stream)
        with pytest.raises(InternalServerError):  # b fails too: the caller gets the call's error, not a hook's
            await router.chat.completions.create(model="chat", messages=HI)
    assert reply.choices[0].message.content == "intact"
    assert route_of(reply).backend == "b" and route_of(reply).complete
    assert streamed == "stream"
    assert {s[0] for s in later} == set(EVENT_KINDS)
    assert later[:8] == [
        ("call_start",),
        ("attempt_start", "a"),
        ("attempt_end", "a", "server_error", 500),
        ("circuit_change", "a/model-a", "closed", "open"),
        ("fallback", "a/model-a", "b/model-b"),
        ("attempt_start", "b"),
        ("attempt_end", "b", "ok", None),
        ("success",),
    ]
    assert counter.kinds == [
        "call_start",
        "circuit_change",
        "success",
        "call_start",
        "success",
        "call_start",
        "circuit_change",
        "failure",
    ]
    logged = [r for r in caplog.records if r.name == "router" and "raised; ignored" in r.getMessage()]
    assert {kind for kind in EVENT_KINDS if any(f"for {kind} raised" in r.getMessage() for r in logged)} == set(
        EVENT_KINDS
    )
    assert len(logged) == len(later)  # one log line per raising call, each with its traceback
    assert all(r.levelno == logging.ERROR and r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in logged)


async def test_circuit_change_hook_follows_a_circuit_open_probe_and_close(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=in_turn(fail(500), ok("model-a")))
    httpx2_mock.post(B).mock(return_value=ok("model-b"))
    changes: list[Event] = []
    cfg = config(circuit={"failures": 1, "cooldown_s": 0.05})
    async with AsyncRouter.from_config(cfg) as router:
        router.on("circuit_change", changes.append)
        first = await router.chat.completions.create(model="chat", messages=HI)
        assert [(c.circuit.deployment, c.circuit.previous, c.circuit.state) for c in changes] == [  # type: ignore[union-attr]
            ("a/model-a", "closed", "open")
        ]
        assert changes[0].record is None and "in a row" in changes[0].circuit.reason  # type: ignore[union-attr]
        await anyio.sleep(0.1)  # the cooldown passes: the next call is let through as a probe, and succeeds
        second = await router.chat.completions.create(model="chat", messages=HI)
    assert route_of(first).backend == "b" and route_of(second).backend == "a"
    assert [(c.circuit.previous, c.circuit.state) for c in changes] == [  # type: ignore[union-attr]
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_unregistering_stops_the_calls(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(return_value=ok("model-a"))

    class Successes(Observer):
        count = 0

        def call_succeeded(self, call: CallInfo) -> None:
            self.count += 1

    successes: list[Event] = []
    ends: list[Event] = []
    observer = Successes()
    async with AsyncRouter.from_config(config()) as router:
        remove_hook = router.on("success", successes.append)
        router.on("attempt_end", ends.append)
        remove_observer = router.observers.add(observer)
        await router.chat.completions.create(model="chat", messages=HI)
        remove_hook()
        remove_observer()
        remove_hook()  # a second removal is harmless
        await router.chat.completions.create(model="chat", messages=HI)
    assert len(successes) == 1 and observer.count == 1
    assert len(ends) == 2  # the other hook is still registered
    with pytest.raises(ValueError, match="unknown event 'finished'"):
        router.on("finished", ends.append)  # type: ignore[arg-type]


# --- 2. every attempt that starts ends, once -----------------------------------------------------


class AttemptBook(Observer):
    """Pairs every attempt_started with its attempt_ended (by identity) and notes anything unpaired."""

    def __init__(self) -> None:
        self.open: dict[int, Attempt] = {}
        self.kept: list[Attempt] = []  # keeps every attempt alive, so no id() is reused
        self.ended: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.starts = 0

    def attempt_started(self, call: CallInfo, attempt: Attempt) -> None:
        if id(attempt) in self.open:
            self.problems.append(f"started twice: {attempt.short()}")
        self.open[id(attempt)] = attempt
        self.kept.append(attempt)
        self.starts += 1

    def attempt_ended(self, call: CallInfo, attempt: Attempt) -> None:
        if self.open.pop(id(attempt), None) is None:
            self.problems.append(f"ended without being open: {attempt.short()}")
        self.ended.append((attempt.backend, attempt.outcome))

    def balanced(self) -> bool:
        return not self.open and not self.problems and self.starts == len(self.ended)


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_hedge_ends_the_losing_attempt_as_well(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=after(1.0, ok("model-a")))
    httpx2_mock.post(B).mock(side_effect=after(0.01, ok("model-b")))
    book = AttemptBook()
    cfg = with_model(config(), hedge={"after_s": 0.05, "max_extra_fraction": 1.0})
    async with AsyncRouter.from_config(cfg) as router:
        router.observers.add(book)
        reply = await router.chat.completions.create(model="chat", messages=HI)
    record = route_of(reply)
    assert record.hedged and record.backend == "b"
    assert [(a.backend, a.outcome) for a in record.attempts] == [("a", "hedge_lost"), ("b", "ok")]
    assert book.balanced() and book.starts == 2
    assert sorted(book.ended) == [("a", "hedge_lost"), ("b", "ok")]  # observers see the final outcome


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_hedged_stream_ends_the_loser_at_once_and_the_winner_with_the_stream(
    httpx2_mock: respx.Router,
) -> None:
    httpx2_mock.post(A).mock(side_effect=sse("model-a", ["slow"], delay_s=2.0))
    httpx2_mock.post(B).mock(side_effect=sse("model-b", ["fa", "st"]))
    book = AttemptBook()
    cfg = with_model(config(), hedge={"after_s": 0.05, "max_extra_fraction": 1.0})
    async with AsyncRouter.from_config(cfg) as router:
        router.observers.add(book)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        assert [a.backend for a in book.open.values()] == ["b"]  # the loser is over; the winner streams on
        assert [backend for backend, _ in book.ended] == ["a"]
        assert await text_of(stream) == "fast"
    assert route_of(stream).hedged and route_of(stream).backend == "b"
    assert book.balanced() and book.starts == 2
    assert book.ended[-1] == ("b", "ok")


async def test_a_hedge_whose_first_attempt_fails_ends_both(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(return_value=ok("model-b"))
    book = AttemptBook()
    cfg = with_model(config(), hedge={"after_s": 5.0, "max_extra_fraction": 1.0})
    fallbacks: list[tuple[str | None, str | None]] = []
    async with AsyncRouter.from_config(cfg) as router:
        router.observers.add(book)
        router.on("fallback", lambda event: fallbacks.append((event.from_deployment, event.to_deployment)))
        with anyio.fail_after(2):  # the duplicate goes at once when the first fails, not after 5 s
            reply = await router.chat.completions.create(model="chat", messages=HI)
    assert route_of(reply).backend == "b" and not route_of(reply).hedged  # a fallback, not a duplicate
    assert book.balanced() and book.ended == [("a", "server_error"), ("b", "ok")]
    assert fallbacks == [("a/model-a", "b/model-b")]


async def test_stream_recovery_ends_the_broken_leg_and_the_continuation(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse("model-a", ["Hel"], finished=False))
    continued = httpx2_mock.post(B).mock(side_effect=sse("model-b", ["lo!"], counts=usage(12, 3)))
    book = AttemptBook()
    seen: list[tuple[Any, ...]] = []
    cfg = config(streams={"recover": "continue"})
    cfg["models"]["chat"]["deployments"][1]["capabilities"] = {"prefill": True}
    async with AsyncRouter.from_config(cfg) as router:
        router.observers.add(book)
        record_all(router, seen)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        assert await text_of(stream) == "Hello!"
    assert json.loads(continued.calls.last.request.content)["messages"][-1] == {"role": "assistant", "content": "Hel"}
    assert book.balanced() and book.ended == [("a", "stream_broken"), ("b", "ok")]
    assert seen == [
        ("call_start",),
        ("attempt_start", "a"),
        ("attempt_end", "a", "stream_broken", None),
        ("fallback", "a/model-a", "b/model-b"),
        ("attempt_start", "b"),
        ("attempt_end", "b", "ok", None),
        ("success",),
    ]
    record = route_of(stream)
    assert record.recovered_after_chars == 3 and record.backend == "b"
    assert record.cost_usd == pytest.approx((12 * 3.0 + 3 * 4.0) / 1e6)  # the leg that finished, at b's price


async def test_a_rejected_continuation_and_a_cancelled_call_end_their_attempts(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=in_turn(sse("model-a", ["Hel"], finished=False), after(5.0, ok("model-a"))))
    httpx2_mock.post(B).mock(return_value=fail(400))
    book = AttemptBook()
    failures: list[Event] = []
    cfg = config(streams={"recover": "continue"})
    cfg["models"]["chat"]["deployments"][1]["capabilities"] = {"prefill": True}
    async with AsyncRouter.from_config(cfg) as router:
        router.observers.add(book)
        router.on("failure", failures.append)
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        with pytest.raises(StreamInterruptedError):
            await text_of(stream)
        assert book.balanced() and book.ended == [("a", "stream_broken"), ("b", "bad_request")]
        with anyio.move_on_after(0.1):  # the caller gives up on a slow answer
            await router.chat.completions.create(model="chat", messages=HI)
    assert book.balanced() and book.ended[-1] == ("a", "cancelled")
    assert len(failures) == 2 and isinstance(failures[0].error, StreamInterruptedError)
    assert isinstance(failures[1].error, anyio.get_cancelled_exc_class())


# --- 3. OpenTelemetry ----------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()  # private: the global provider is never set
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_fallback_call_is_one_span_with_an_attempt_span_per_try(
    httpx2_mock: respx.Router, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(return_value=ok("model-b", counts=usage(40, 8)))
    async with AsyncRouter.from_config(config()) as router:
        router.observers.add(OTelObserver(tracer_provider=tracer_provider))
        await router.chat.completions.create(model="chat", messages=HI, temperature=0.2, max_tokens=64)
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["chat chat", "chat model-a", "chat model-b"]
    call = next(s for s in spans if s.name == "chat chat")
    failed = next(s for s in spans if s.name == "chat model-a")
    served = next(s for s in spans if s.name == "chat model-b")
    assert call.parent is None and call.context is not None
    for attempt in (failed, served):
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
        assert attempt.context is not None and attempt.context.trace_id == call.context.trace_id
        assert attempt.kind is SpanKind.CLIENT
        assert attempt.end_time is not None and call.end_time is not None and attempt.end_time <= call.end_time
    assert failed.status.status_code is StatusCode.ERROR
    assert served.status.status_code is StatusCode.UNSET
    assert call.status.status_code is StatusCode.UNSET  # the call itself succeeded
    assert {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "model-a",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 64,
        "inference_router.backend": "a",
        "inference_router.outcome": "server_error",
        "error.type": "server_error",
        "http.response.status_code": 500,
    }.items() <= attrs(failed).items()
    assert attrs(served)["inference_router.outcome"] == "ok" and "error.type" not in attrs(served)
    call_attrs = attrs(call)
    assert {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "chat",
        "gen_ai.response.model": "model-b",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 40,
        "gen_ai.usage.output_tokens": 8,
        "inference_router.alias": "chat",
        "inference_router.backend": "b",
        "inference_router.attempts": 2,
        "inference_router.cached": False,
    }.items() <= call_attrs.items()
    assert call_attrs["inference_router.cost_usd"] == pytest.approx((40 * 3.0 + 8 * 4.0) / 1e6)
    assert [(e.name, dict(e.attributes or {})) for e in call.events] == [
        ("fallback", {"inference_router.fallback.from": "a/model-a", "inference_router.fallback.to": "b/model-b"})
    ]


async def test_the_call_span_is_current_while_the_router_works_and_only_then(
    httpx2_mock: respx.Router, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    from opentelemetry import trace

    httpx2_mock.post(A).mock(return_value=fail(500))
    httpx2_mock.post(B).mock(return_value=ok("model-b"))
    seen: list[int] = []
    tracer = tracer_provider.get_tracer("app")
    async with AsyncRouter.from_config(config()) as router:
        router.observers.add(OTelObserver(tracer_provider=tracer_provider))
        router.on("attempt_start", lambda event: seen.append(trace.get_current_span().get_span_context().span_id))
        with tracer.start_as_current_span("app request") as outer:
            await router.chat.completions.create(model="chat", messages=HI)
            assert trace.get_current_span() is outer  # given back to the caller's span afterwards
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call, app = spans["chat chat"], spans["app request"]
    assert call.parent is not None and app.context is not None and call.parent.span_id == app.context.span_id
    assert call.context is not None and seen == [call.context.span_id] * 2  # hooks ran inside the call's span


async def test_a_streamed_calls_spans_end_when_the_stream_is_consumed(
    httpx2_mock: respx.Router, exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    httpx2_mock.post(A).mock(side_effect=sse("model-a", ["Hel", "lo"], counts=usage(10, 2)))
    async with AsyncRouter.from_config(config()) as router:
        router.observers.add(OTelObserver(tracer_provider=tracer_provider))
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        assert exporter.get_finished_spans() == ()  # both spans are open while the answer streams
        assert await text_of(stream) == "Hello"
        spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["chat chat", "chat model-a"]
    call = next(s for s in spans if s.name == "chat chat")
    attempt = next(s for s in spans if s.name == "chat model-a")
    assert call.context is not None and attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    call_attrs = attrs(call)
    assert call_attrs["gen_ai.request.stream"] is True
    assert call_attrs["gen_ai.usage.output_tokens"] == 2
    assert call_attrs["gen_ai.response.time_to_first_chunk"] > 0
    assert attrs(attempt)["inference_router.outcome"] == "ok"


# --- 4. Prometheus -------------------------------------------------------------------------------


async def test_prometheus_counts_real_calls(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(
        side_effect=in_turn(fail(500), ok("model-a"), sse("model-a", ["Hel", "lo"], counts=usage(10, 2)))
    )
    httpx2_mock.post(B).mock(return_value=ok("model-b"))
    cfg = config(telemetry={"prometheus": True, "otel": "off"}, cache={"backend": "memory"})
    async with AsyncRouter.from_config(cfg) as router:
        metrics = router.metrics
        assert metrics is not None
        await router.chat.completions.create(model="chat", messages=HI)  # a 500 → b
        await router.chat.completions.create(model="chat", messages=HI, temperature=0)  # a, stored
        hit = await router.chat.completions.create(model="chat", messages=HI, temperature=0)  # from the cache
        assert route_of(hit).cached
        stream = await router.chat.completions.create(model="chat", messages=HI, stream=True)
        assert 'inference_router_in_flight{deployment="a/model-a"} 1.0' in metrics.exposition().splitlines()
        assert await text_of(stream) == "Hello"
        lines = set(metrics.exposition().splitlines())
    assert {
        'inference_router_requests_total{alias="chat",outcome="ok"} 3.0',
        'inference_router_requests_total{alias="chat",outcome="cached"} 1.0',
        'inference_router_attempts_total{deployment="a/model-a",outcome="server_error"} 1.0',
        'inference_router_attempts_total{deployment="a/model-a",outcome="ok"} 2.0',
        'inference_router_attempts_total{deployment="b/model-b",outcome="ok"} 1.0',
        'inference_router_errors_total{deployment="a/model-a",error_class="server_error"} 1.0',
        'inference_router_cache_hits_total{alias="chat"} 1.0',
        'inference_router_in_flight{deployment="a/model-a"} 0.0',
        'inference_router_in_flight{deployment="b/model-b"} 0.0',
        'inference_router_ttft_seconds_count{deployment="a/model-a"} 1.0',
        'inference_router_request_duration_seconds_count{deployment="a/model-a"} 2.0',
        'inference_router_request_duration_seconds_count{deployment="b/model-b"} 1.0',
        'inference_router_tokens_total{deployment="a/model-a",kind="input"} 20.0',
        'inference_router_tokens_total{deployment="a/model-a",kind="output"} 7.0',
        'inference_router_tokens_total{deployment="b/model-b",kind="input"} 10.0',
        'inference_router_tokens_total{deployment="b/model-b",kind="output"} 5.0',
    } <= lines
    prefixes = (
        "inference_router_requests_total{",
        "inference_router_errors_total{",
        "inference_router_attempts_total{",
    )
    assert len([line for line in lines if line.startswith(prefixes)]) == 6  # nothing else was counted
    assert not any(line.startswith("inference_router_ttft_seconds_count") and "b/model-b" in line for line in lines)
    cost = metrics.registry.get_sample_value
    # a: (10 × $1 + 5 × $2) + (10 × $1 + 2 × $2) per million; b: 10 × $3 + 5 × $4; the cache hit: nothing
    assert cost("inference_router_cost_usd_total", {"deployment": "a/model-a"}) == pytest.approx(34e-6)
    assert cost("inference_router_cost_usd_total", {"deployment": "b/model-b"}) == pytest.approx(50e-6)


# --- 5. usage, in memory and in the file -----------------------------------------------------------


def plain(rows: list[UsageRow]) -> list[dict[str, Any]]:
    """Rows as dicts with the cost rounded (SQLite and Python add floats in their own order)."""
    return [{**row.to_dict(), "cost_usd": round(row.cost_usd, 12)} for row in rows]


def only(rows: list[UsageRow]) -> UsageRow:
    assert len(rows) == 1
    return rows[0]


async def test_usage_totals_in_memory_in_the_file_and_across_routers(tmp_path: Path, httpx2_mock: respx.Router) -> None:
    spend = usage(100, 20)  # a: 100 × $1 + 20 × $2 = $140 per million; b: 100 × $3 + 20 × $4 = $380
    httpx2_mock.post(A).mock(
        side_effect=in_turn(
            ok("model-a", counts=spend), fail(500), ok("model-a", counts=spend), ok("model-a", counts=spend)
        )
    )
    httpx2_mock.post(B).mock(return_value=ok("model-b", counts=spend))
    path = tmp_path / "usage.sqlite"
    cfg = config(usage={"path": str(path)}, cache={"backend": "memory"})
    batch = {"tags": ["batch"]}
    async with AsyncRouter.from_config(cfg) as router:
        await router.chat.completions.create(model="chat", messages=HI, route=batch)  # a
        await router.chat.completions.create(model="chat", messages=HI, route=batch)  # a 500 → b
        await router.chat.completions.create(model="chat", messages=HI, temperature=0)  # a, stored
        await router.chat.completions.create(model="chat", messages=HI, temperature=0)  # the cache
        total = only(router.usage(group_by=()))
        by_tag = {row.tag: row for row in router.usage(group_by=("tag",))}
        by_backend = {row.backend: row for row in router.usage(group_by=("backend",))}
        in_memory = router.usage(since_s=86400)
    assert (total.requests, total.attempts, total.errors, total.failures, total.cache_hits) == (4, 4, 1, 0, 1)
    assert (total.prompt_tokens, total.completion_tokens) == (300, 60)  # the cache hit used no tokens
    assert total.cost_usd == pytest.approx((140 + 380 + 140) / 1e6)
    assert (by_tag["batch"].requests, by_tag["batch"].attempts, by_tag["batch"].errors) == (2, 3, 1)
    assert by_tag["batch"].cost_usd == pytest.approx((140 + 380) / 1e6)
    assert (by_tag[""].requests, by_tag[""].attempts, by_tag[""].cache_hits) == (2, 1, 1)
    assert by_tag[""].cost_usd == pytest.approx(140 / 1e6)
    assert (by_backend["a"].requests, by_backend["a"].attempts, by_backend["a"].errors) == (2, 3, 1)
    assert (by_backend["b"].requests, by_backend["b"].attempts, by_backend["b"].errors) == (1, 1, 0)
    cached = by_backend["(cache)"]
    assert (cached.requests, cached.cache_hits, cached.attempts, cached.prompt_tokens, cached.cost_usd) == (
        1,
        1,
        0,
        0,
        0,
    )

    # after the router closed, the file holds the same totals
    assert plain(read_usage(path, since_s=86400)) == plain(in_memory)
    stored = only(read_usage(path, since_s=86400, group_by=()))
    assert (stored.requests, stored.attempts, stored.errors, stored.cache_hits) == (4, 4, 1, 1)
    assert stored.cost_usd == pytest.approx(660e-6)

    # another router on the same file (as another process would) adds to them
    async with AsyncRouter.from_config(cfg) as second:
        await second.chat.completions.create(model="chat", messages=HI, route=batch)
        own = only(second.usage(group_by=()))
    assert (own.requests, own.attempts, own.cost_usd) == (1, 1, pytest.approx(140e-6))  # only its own calls
    both = only(read_usage(path, since_s=86400, group_by=()))
    assert (both.requests, both.attempts, both.errors, both.cache_hits) == (5, 5, 1, 1)
    assert (both.prompt_tokens, both.completion_tokens) == (400, 80)
    assert both.cost_usd == pytest.approx(800e-6)
    tagged = {row.tag: row for row in read_usage(path, since_s=86400, group_by=("tag",))}
    assert (tagged["batch"].requests, tagged["batch"].cost_usd) == (3, pytest.approx(660e-6))


# --- 6. cost arithmetic ----------------------------------------------------------------------------

DEEPSEEK_CONFIG: dict[str, Any] = {
    "backends": {"deepseek": {"provider": "deepseek", "api_key": "k"}},
    "models": {"pro": {"deployments": [{"backend": "deepseek", "model": "deepseek-v4-pro"}]}},
    "retry": {"attempts_per_deployment": 1},
    "telemetry": {"otel": "off"},
}
DEEPSEEK_USAGE = {  # DeepSeek's own fields: cache hits in prompt_cache_hit_tokens, not prompt_tokens_details
    "prompt_tokens": 1000,
    "completion_tokens": 300,
    "total_tokens": 1300,
    "prompt_cache_hit_tokens": 600,
    "prompt_cache_miss_tokens": 400,
}
# deepseek-v4-pro per million: peak $1.32 in, $0.044 cached, $3.96 out; off-peak half: $0.66, $0.022, $1.98
# 400 uncached + 600 cached prompt tokens, 300 completion tokens:
PEAK_USD = (400 * 1.32 + 600 * 0.044 + 300 * 3.96) / 1e6  # = $0.0017424
OFFPEAK_USD = (400 * 0.66 + 600 * 0.022 + 300 * 1.98) / 1e6  # = $0.0008712


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2026, 11, 30, 0, 59, tzinfo=UTC), OFFPEAK_USD),  # Monday, before 01:00 UTC (09:00 Beijing)
        (datetime(2026, 11, 30, 1, 0, tzinfo=UTC), PEAK_USD),
        (datetime(2026, 11, 30, 3, 59, tzinfo=UTC), PEAK_USD),
        (datetime(2026, 11, 30, 4, 0, tzinfo=UTC), OFFPEAK_USD),  # Beijing's lunch break, 12:00–14:00
        (datetime(2026, 11, 30, 5, 59, tzinfo=UTC), OFFPEAK_USD),
        (datetime(2026, 11, 30, 6, 0, tzinfo=UTC), PEAK_USD),
        (datetime(2026, 11, 30, 9, 59, tzinfo=UTC), PEAK_USD),
        (datetime(2026, 11, 30, 10, 0, tzinfo=UTC), OFFPEAK_USD),  # 18:00 Beijing
        (datetime(2026, 12, 5, 7, 30, tzinfo=UTC), OFFPEAK_USD),  # Saturday: off-peak all day
        (datetime(2026, 10, 1, 2, 0, tzinfo=UTC), OFFPEAK_USD),  # Thursday, National Day: a Chinese holiday
        (datetime(2026, 2, 20, 7, 0, tzinfo=UTC), OFFPEAK_USD),  # Friday given off in the Spring Festival break
        (datetime(2026, 10, 8, 2, 0, tzinfo=UTC), PEAK_USD),  # the Thursday after the National Day break
    ],
    ids=lambda v: v.strftime("%a-%m%d-%H%M") if isinstance(v, datetime) else "",
)
async def test_deepseek_bills_the_price_in_effect_at_the_edges_of_its_peak(
    httpx2_mock: respx.Router, when: datetime, expected: float
) -> None:
    httpx2_mock.post(DEEPSEEK).mock(return_value=ok("deepseek-v4-pro", counts=DEEPSEEK_USAGE))
    async with AsyncRouter.from_config(DEEPSEEK_CONFIG) as router:
        router._path.wall_clock = lambda: when
        reply = await router.chat.completions.create(model="pro", messages=HI)
        row = only(router.usage(group_by=()))
    record = route_of(reply)
    assert record.usage is not None and record.usage.cached_prompt_tokens == 600
    assert record.cost_usd == pytest.approx(expected)
    assert (row.cost_usd, row.cached_tokens) == (pytest.approx(expected), 600)


async def test_a_streamed_deepseek_answer_off_peak_is_billed_off_peak(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(DEEPSEEK).mock(side_effect=sse("deepseek-v4-pro", ["ok"], counts=DEEPSEEK_USAGE))
    async with AsyncRouter.from_config(DEEPSEEK_CONFIG) as router:
        router._path.wall_clock = lambda: datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
        stream = await router.chat.completions.create(model="pro", messages=HI, stream=True)
        assert await text_of(stream) == "ok"
    assert route_of(stream).cost_usd == pytest.approx(OFFPEAK_USD)  # $0.0008712


async def test_cached_prompt_tokens_are_billed_at_the_cached_price_or_else_the_input_price(
    httpx2_mock: respx.Router,
) -> None:
    cached = usage(1000, 100, cached=800)
    httpx2_mock.post(A).mock(return_value=ok("model-a", counts=cached))
    httpx2_mock.post(B).mock(return_value=ok("model-b", counts=cached))
    async with AsyncRouter.from_config(config()) as router:
        on_b = await router.chat.completions.create(model="chat", messages=HI, route={"only": ["b"]})
        on_a = await router.chat.completions.create(model="chat", messages=HI, route={"only": ["a"]})
        rows = {row.backend: row for row in router.usage(group_by=("backend",))}
    # b: 200 uncached × $3 + 800 cached × $0.50 + 100 out × $4 = $1400 per million
    assert route_of(on_b).cost_usd == pytest.approx((200 * 3.0 + 800 * 0.5 + 100 * 4.0) / 1e6)
    # a has no cached price: all 1000 prompt tokens at $1, 100 out × $2 = $1200 per million
    assert route_of(on_a).cost_usd == pytest.approx((1000 * 1.0 + 100 * 2.0) / 1e6)
    assert (rows["b"].cached_tokens, rows["b"].cost_usd) == (800, pytest.approx(1400e-6))
    assert (rows["a"].cached_tokens, rows["a"].cost_usd) == (800, pytest.approx(1200e-6))


async def test_reasoning_tokens_are_billed_once_as_output(httpx2_mock: respx.Router) -> None:
    """completion_tokens (500) already include the reasoning tokens (400): they are not billed twice."""
    httpx2_mock.post(B).mock(return_value=ok("model-b", counts=usage(100, 500, reasoning=400)))
    async with AsyncRouter.from_config(config()) as router:
        reply = await router.chat.completions.create(model="chat", messages=HI, route={"only": ["b"]})
        row = only(router.usage(group_by=()))
    record = route_of(reply)
    assert record.usage is not None and (record.usage.completion_tokens, record.usage.reasoning_tokens) == (500, 400)
    assert record.cost_usd == pytest.approx((100 * 3.0 + 500 * 4.0) / 1e6)  # $2300 per million, not $3900
    assert (row.completion_tokens, row.reasoning_tokens) == (500, 400)
    assert row.cost_usd == pytest.approx(2300e-6)


async def test_a_cache_hit_costs_nothing_and_counts_as_a_cache_hit(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(
        side_effect=in_turn(ok("model-a", counts=usage(100, 20)), sse("model-a", ["Hel", "lo"], counts=usage(10, 2)))
    )
    async with AsyncRouter.from_config(config(cache={"backend": "memory"})) as router:
        first = await router.chat.completions.create(model="chat", messages=HI, temperature=0)
        again = await router.chat.completions.create(model="chat", messages=HI, temperature=0)
        streamed = await router.chat.completions.create(model="chat", messages=HI, temperature=0, seed=1, stream=True)
        assert await text_of(streamed) == "Hello"
        replayed = await router.chat.completions.create(model="chat", messages=HI, temperature=0, seed=1, stream=True)
        assert await text_of(replayed) == "Hello"
        rows = {row.backend: row for row in router.usage(group_by=("backend",))}
    assert route_of(first).cost_usd == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert route_of(streamed).cost_usd == pytest.approx((10 * 1.0 + 2 * 2.0) / 1e6)
    for hit in (route_of(again), route_of(replayed)):
        assert hit.cached and hit.cost_usd == 0.0 and hit.attempts == []
    assert route_of(again).usage == route_of(first).usage  # what the answer used when it was made
    cache = rows["(cache)"]
    assert (cache.requests, cache.cache_hits, cache.attempts, cache.cost_usd) == (2, 2, 0, 0.0)
    assert (cache.prompt_tokens, cache.completion_tokens) == (0, 0)
    assert (rows["a"].requests, rows["a"].cache_hits, rows["a"].cost_usd) == (2, 0, pytest.approx(154e-6))


def test_an_async_hook_is_refused_at_registration() -> None:
    from router.path.events import Hooks

    async def slow(event: Any) -> None: ...

    with pytest.raises(TypeError, match="synchronously"):
        Hooks().on("success", slow)
    with pytest.raises(ValueError, match="unknown event 'succes'"):
        Hooks().on("succes", print)  # type: ignore[arg-type]
