"""The request path against mocked providers: fallback order, retries, deadlines, stream commit."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import respx
from openai.types.chat import ChatCompletion

from router import (
    AsyncRouter,
    ContextLengthExceededError,
    InternalServerError,
    NoCandidatesError,
    RateLimitError,
    StreamInterruptedError,
    UnknownModelError,
    route_of,
)

pytestmark = pytest.mark.anyio
A = "http://a.test/v1/chat/completions"
B = "http://b.test/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def config(**overrides: Any) -> dict[str, Any]:
    """Two backends; alias `primary` (m1 on a, then m1 on b) falls back to alias `fallback` (m2 on b)."""
    base: dict[str, Any] = {
        "backends": {
            "a": {"provider": "openai", "base_url": "http://a.test/v1", "api_key": "sk-test-route-a-4d1f"},
            "b": {"provider": "openai", "base_url": "http://b.test/v1", "api_key": "sk-test-route-b-9e2c"},
        },
        "models": {
            "primary": {
                "deployments": [{"backend": "a", "model": "m1"}, {"backend": "b", "model": "m1"}],
                "fallbacks": ["fallback"],
            },
            "fallback": {"deployments": [{"backend": "b", "model": "m2"}]},
        },
        "retry": {"attempts_per_deployment": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "timeouts": {"first_token_s": 2, "stall_s": 2, "total_s": 10},
    }
    base.update(overrides)
    return base


def completion(model: str, text: str = "hello") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m1","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
)


def sse(*parts: bytes | float) -> Any:
    """A respx side effect answering each request with a fresh stream of `parts`; a float sleeps."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            if isinstance(part, float):
                await anyio.sleep(part)
            else:
                yield part

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def model_of(request: httpx.Request) -> str:
    return str(json.loads(request.content)["model"])


async def test_returns_openai_types_with_route_record(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(return_value=httpx.Response(200, json=completion("m1")))
    async with AsyncRouter.from_config(config()) as router:
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert isinstance(reply, ChatCompletion)
    assert reply.model_dump() == ChatCompletion.model_validate(completion("m1")).model_dump()
    route = route_of(reply)
    assert (route.backend, route.model, route.alias) == ("a", "m1", "primary")
    assert [a.outcome for a in route.attempts] == ["ok"]
    assert route.usage is not None and route.usage.total_tokens == 4
    assert route.latency_s is not None and route.latency_s > 0


async def test_falls_over_in_order_then_to_fallback_alias(httpx2_mock: respx.Router) -> None:
    seen: list[str] = []

    def a(request: httpx.Request) -> httpx.Response:
        seen.append("a/" + model_of(request))
        return httpx.Response(500, json={"error": {"message": "boom"}})

    def b(request: httpx.Request) -> httpx.Response:
        seen.append("b/" + model_of(request))
        if model_of(request) == "m1":
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json=completion("m2"))

    httpx2_mock.post(A).mock(side_effect=a)
    httpx2_mock.post(B).mock(side_effect=b)
    async with AsyncRouter.from_config(config()) as router:
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert seen == ["a/m1", "a/m1", "b/m1", "b/m1", "b/m2"]
    route = route_of(reply)
    assert [(a.backend, a.model, a.outcome) for a in route.attempts] == [
        ("a", "m1", "server_error"),
        ("a", "m1", "server_error"),
        ("b", "m1", "overloaded"),
        ("b", "m1", "overloaded"),
        ("b", "m2", "ok"),
    ]
    assert (route.backend, route.model) == ("b", "m2")


async def test_attempts_are_bounded_and_error_carries_them(httpx2_mock: respx.Router) -> None:
    route_a = httpx2_mock.post(A).mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    route_b = httpx2_mock.post(B).mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    cfg = config(retry={"attempts_per_deployment": 3, "max_attempts": 4, "backoff_initial_s": 0.0})
    async with AsyncRouter.from_config(cfg) as router:
        with pytest.raises(InternalServerError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
    assert isinstance(caught.value, openai.InternalServerError)
    assert route_a.call_count + route_b.call_count == 4
    assert len(caught.value.attempts) == 4
    assert caught.value.status_code == 500 and "after 4 attempts" in str(caught.value)


async def test_retry_after_is_honoured(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(
        side_effect=[
            httpx.Response(429, headers={"retry-after": "0.4"}, json={"error": {"message": "slow down"}}),
            httpx.Response(200, json=completion("m1")),
        ]
    )
    async with AsyncRouter.from_config(config()) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
        waited = time.perf_counter() - started
    assert waited >= 0.4
    attempts = route_of(reply).attempts
    assert [(a.backend, a.outcome) for a in attempts] == [("a", "rate_limited"), ("a", "ok")]
    assert attempts[0].retry_after_s == pytest.approx(0.4)


async def test_long_retry_after_falls_over_at_once(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(
        return_value=httpx.Response(429, headers={"retry-after": "600"}, json={"error": {"message": "quota"}})
    )
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("m1")))
    async with AsyncRouter.from_config(config()) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert time.perf_counter() - started < 1.0
    assert [(a.backend, a.outcome) for a in route_of(reply).attempts] == [("a", "rate_limited"), ("b", "ok")]


async def test_every_candidate_rate_limited_raises_rate_limit_error(httpx2_mock: respx.Router) -> None:
    limited = httpx.Response(429, headers={"retry-after": "120"}, json={"error": {"message": "limit"}})
    httpx2_mock.post(A).mock(return_value=limited)
    httpx2_mock.post(B).mock(return_value=limited)
    async with AsyncRouter.from_config(config()) as router:
        with pytest.raises(openai.RateLimitError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
    assert isinstance(caught.value, RateLimitError) and caught.value.retry_after == 120
    assert [a.outcome for a in caught.value.attempts] == ["rate_limited"] * 3


async def test_context_too_long_is_not_retried_on_the_same_deployment(httpx2_mock: respx.Router) -> None:
    too_long = httpx.Response(400, json={"error": {"message": "This model's maximum context length is 10 tokens."}})
    route_a = httpx2_mock.post(A).mock(return_value=too_long)
    httpx2_mock.post(B).mock(return_value=too_long)
    async with AsyncRouter.from_config(config()) as router:
        with pytest.raises(openai.BadRequestError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
    assert isinstance(caught.value, ContextLengthExceededError)
    assert route_a.call_count == 1


async def test_stream_failing_before_first_token_falls_over(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse(chunk(role="assistant")))  # cut: no token, no [DONE]
    httpx2_mock.post(B).mock(
        side_effect=sse(
            chunk(role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE, b"data: [DONE]\n\n"
        )
    )
    async with AsyncRouter.from_config(config()) as router:
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert all(c.choices for c in chunks), "the caller did not ask for the usage chunk"
    route = route_of(stream)
    assert route.complete and route.backend == "b"
    assert route.attempts[0].outcome == "stream_broken"
    assert route.usage is not None and route.usage.completion_tokens == 2


async def test_stream_sends_usage_chunk_when_asked(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse(chunk("Hi"), chunk(finish="stop"), USAGE, b"data: [DONE]\n\n"))
    async with AsyncRouter.from_config(config()) as router:
        stream = await router.chat.completions.create(
            model="primary", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


async def test_stream_cut_after_first_token_raises_with_partial_text(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse(chunk(role="assistant"), chunk("Hel"), chunk("lo")))
    async with AsyncRouter.from_config(config()) as router:
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for c in stream:
                received.append(c)
    error = caught.value
    assert isinstance(error, StreamInterruptedError)
    assert error.partial_text == "Hello" and "cut" in str(error)
    assert route_of(stream).attempts[-1].outcome == "stream_broken"


async def test_stream_stall_after_first_token_raises(httpx2_mock: respx.Router) -> None:
    # keep-alive comments arrive, but no data: they must not count as progress
    parts: list[bytes | float] = [chunk("Hi")] + [0.1, b": keep-alive\n\n"] * 10
    httpx2_mock.post(A).mock(side_effect=sse(*parts))
    cfg = config(timeouts={"first_token_s": 2, "stall_s": 0.3, "total_s": 10})
    async with AsyncRouter.from_config(cfg) as router:
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        started = time.perf_counter()
        with pytest.raises(StreamInterruptedError, match="stalled"):
            async for _ in stream:
                pass
    assert time.perf_counter() - started < 0.8


async def test_silent_backend_costs_first_token_deadline_then_falls_over(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse(*[0.1, b": keep-alive\n\n"] * 50))
    httpx2_mock.post(B).mock(side_effect=sse(chunk("ok"), chunk(finish="stop"), b"data: [DONE]\n\n"))
    cfg = config(timeouts={"first_token_s": 0.3, "stall_s": 5, "total_s": 10})
    async with AsyncRouter.from_config(cfg) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "ok"
    assert time.perf_counter() - started < 1.0, "the silent backend was retried or waited on too long"
    assert [a.outcome for a in route_of(stream).attempts] == ["timeout", "ok"]


async def test_call_deadline_bounds_everything(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(side_effect=sse(*[0.1, b": keep-alive\n\n"] * 50))
    async with AsyncRouter.from_config(config()) as router:
        started = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            await router.chat.completions.create(model="primary", messages=HI, stream=True, route={"deadline_s": 0.5})
    assert time.perf_counter() - started < 1.0


@pytest.mark.httpx2(assert_all_called=False)
async def test_hints_exclude_and_prefer(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(A).mock(return_value=httpx.Response(200, json=completion("m1")))
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("m1")))
    async with AsyncRouter.from_config(config()) as router:
        preferred = await router.chat.completions.create(model="primary", messages=HI, route={"prefer": ["b"]})
        excluded = await router.chat.completions.create(model="primary", messages=HI, route={"exclude": ["a"]})
        with pytest.raises(NoCandidatesError):
            await router.chat.completions.create(model="fallback", messages=HI, route={"exclude": ["b"]})
    assert route_of(preferred).backend == "b" and route_of(excluded).backend == "b"


async def test_model_id_routes_and_unknown_model_lists_aliases(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("m2")))
    async with AsyncRouter.from_config(config()) as router:
        reply = await router.chat.completions.create(model="m2", messages=HI)
        assert route_of(reply).model == "m2" and route_of(reply).alias is None
        with pytest.raises(openai.NotFoundError) as caught:
            await router.chat.completions.create(model="gpt-5", messages=HI)
    assert isinstance(caught.value, UnknownModelError)
    assert "fallback, primary" in str(caught.value) and caught.value.status_code == 404


async def test_request_fields_pass_through(httpx2_mock: respx.Router) -> None:
    sent: list[httpx.Request] = []

    def capture(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=completion("m1"))

    httpx2_mock.post(A).mock(side_effect=capture)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with AsyncRouter.from_config(config()) as router:
        await router.chat.completions.create(
            model="primary",
            messages=HI,
            tools=tools,
            tool_choice="auto",
            temperature=0,
            seed=7,
            max_completion_tokens=5,
            stop=["x"],
            response_format={"type": "json_object"},
            user="u",
            extra_headers={"x-trace": "1"},
            extra_body={"top_k": 3},
            metadata={"a": "b"},
            temperature_unused=openai.NOT_GIVEN,
        )
    body = json.loads(sent[0].content)
    assert body["model"] == "m1" and body["tools"] == tools and body["seed"] == 7 and body["top_k"] == 3
    assert body["max_completion_tokens"] == 5 and body["response_format"] == {"type": "json_object"}
    assert "temperature_unused" not in body and "stream" not in body
    assert sent[0].headers["x-trace"] == "1" and sent[0].headers["authorization"] == "Bearer sk-test-route-a-4d1f"


async def test_buffer_commit_falls_over_even_after_the_first_token(httpx2_mock: respx.Router) -> None:
    """`streams: {commit: buffer}`: a cut anywhere in the answer falls over invisibly."""
    httpx2_mock.post(A).mock(side_effect=sse(chunk(role="assistant"), chunk("Hel"), chunk("lo")))  # cut
    httpx2_mock.post(B).mock(
        side_effect=sse(chunk("Good"), chunk("bye"), chunk(finish="stop"), USAGE, b"data: [DONE]\n\n")
    )
    async with AsyncRouter.from_config(config(streams={"commit": "buffer"})) as router:
        stream = await router.chat.completions.create(model="primary", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Goodbye"
    first = route_of(stream).attempts[0]
    assert (first.backend, first.outcome) == ("a", "stream_broken")


@pytest.mark.httpx2(assert_all_called=False)
async def test_context_too_long_skips_deployments_whose_window_is_not_larger(httpx2_mock: respx.Router) -> None:
    """A 400 stating a 4096-token window: the same model elsewhere is skipped, a larger window is tried."""
    too_long = httpx.Response(
        400, json={"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested"}}
    )
    small = httpx2_mock.post(A).mock(return_value=too_long)
    same_model = httpx2_mock.post(B).mock(return_value=too_long)
    large = httpx2_mock.post("http://c.test/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("big"))
    )
    cfg = config()
    cfg["backends"]["c"] = {"provider": "openai", "base_url": "http://c.test/v1"}
    cfg["models"]["fallback"]["deployments"] = [{"backend": "c", "model": "big", "context_window": 128000}]
    async with AsyncRouter.from_config(cfg) as router:
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert (small.call_count, same_model.call_count, large.call_count) == (1, 0, 1)
    record = route_of(reply)
    assert record.backend == "c" and record.fallback == "fallback"
    assert any(e.candidate == "b/m1" and "4096 tokens" in e.reason for e in record.excluded)


async def test_content_filter_surfaces_by_default_and_can_fall_over(httpx2_mock: respx.Router) -> None:
    refused = httpx.Response(400, json={"error": {"message": "flagged", "code": "content_filter"}})
    httpx2_mock.post(A).mock(return_value=refused)
    other = httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("m1")))
    async with AsyncRouter.from_config(config()) as router:
        with pytest.raises(openai.BadRequestError, match="flagged"):
            await router.chat.completions.create(model="primary", messages=HI)
    assert other.call_count == 0
    async with AsyncRouter.from_config(config(retry={"content_filter": "fall_over"})) as router:
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert route_of(reply).backend == "b"
