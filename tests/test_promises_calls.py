"""README "The same call, the same types", "Per-call hints" and "Streams": what a caller passes to
`create` is honoured — openai's own arguments, `route=` hints dict or typed — and streams commit,
close and report as promised."""

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

from router import AsyncRouter, RouteHints, StreamInterruptedError, route_of
from tests.fault_server import FaultServer, ok, silent

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
A = "http://a.test/v1/chat/completions"
B = "http://b.test/v1/chat/completions"


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "backends": {
            "a": {"provider": "openai", "base_url": "http://a.test/v1", "api_key": "sk-test-calls-a-1111"},
            "b": {"provider": "openai", "base_url": "http://b.test/v1", "api_key": "sk-test-calls-b-2222"},
        },
        "models": {"m": {"deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}]}},
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.0},
        "timeouts": {"first_token_s": 5, "stall_s": 5, "total_s": 10},
        "telemetry": {"otel": "off"},
    }
    base.update(overrides)
    return base


def completion(text: str = "hello", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text, **message}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chunk(delta: dict[str, Any], *, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def cut_stream(*parts: bytes) -> Any:
    """A respx side effect: a stream of `parts`, then it ends (no finish reason, no [DONE]): a cut."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def sent(route: respx.Route) -> dict[str, Any]:
    return dict(json.loads(route.calls.last.request.content))


# --- openai's own arguments ---------------------------------------------------------------------


async def test_a_previous_replys_pydantic_message_can_be_passed_back(httpx2_mock: respx.Router) -> None:
    """`messages` may hold a previous reply's `message` object (tool calls included), as with openai."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    route = httpx2_mock.post(A).mock(
        side_effect=[
            httpx.Response(200, json=completion(None, tool_calls=[call])),  # type: ignore[arg-type]
            httpx.Response(200, json=completion("done")),
        ]
    )
    async with AsyncRouter.from_config(config()) as client:
        first = await client.chat.completions.create(model="m", messages=HI)
        message = first.choices[0].message
        follow = [*HI, message, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
        second = await client.chat.completions.create(model="m", messages=follow)  # type: ignore[list-item]
    assert second.choices[0].message.content == "done"
    passed = sent(route)["messages"][1]
    assert passed["role"] == "assistant" and passed["tool_calls"] == [call]
    assert sent(route)["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}


async def test_openais_per_call_timeout_bounds_the_whole_call() -> None:
    """`timeout=` (openai's argument) lowers the call's total deadline: silent backends cost that, not 10 s."""
    with FaultServer(a=silent(hold_s=5), b=silent(hold_s=5)) as fault:
        cfg = config()
        cfg["backends"] = {n: {"provider": "openai", "base_url": fault.base_url(n)} for n in ("a", "b")}
        async with AsyncRouter.from_config(cfg) as client:
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=HI, timeout=0.4)
            took = time.monotonic() - started
    assert 0.3 < took < 1.5, f"took {took:.2f}s for timeout=0.4"


async def test_extra_query_reaches_the_backend(httpx2_mock: respx.Router) -> None:
    """`extra_query` is added to the upstream URL's query string."""
    route = httpx2_mock.post(A).mock(return_value=httpx.Response(200, json=completion()))
    async with AsyncRouter.from_config(config()) as client:
        await client.chat.completions.create(model="m", messages=HI, extra_query={"api-version": "2024-10-21"})
    assert route.calls.last.request.url.params["api-version"] == "2024-10-21"


# --- route= hints ---------------------------------------------------------------------------------


@pytest.mark.httpx2(assert_all_called=False)
async def test_typed_route_hints_work_like_a_dict(httpx2_mock: respx.Router) -> None:
    """`route=RouteHints(...)` steers the call as the same dict would."""
    httpx2_mock.post(A).mock(return_value=httpx.Response(200, json=completion("from a")))
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("from b")))
    async with AsyncRouter.from_config(config()) as client:
        typed = await client.chat.completions.create(model="m", messages=HI, route=RouteHints(only=("b",), tags=("t",)))
        plain = await client.chat.completions.create(model="m", messages=HI, route={"only": ["b"]})
        default = await client.chat.completions.create(model="m", messages=HI)
    assert [r.choices[0].message.content for r in (typed, plain, default)] == ["from b", "from b", "from a"]
    assert list(route_of(typed).tags) == ["t"]


@pytest.mark.httpx2(assert_all_called=False)
async def test_require_max_cost_and_max_ttft_through_route(httpx2_mock: respx.Router) -> None:
    """`require`, `max_cost_usd`, `max_ttft_s` hints exclude the deployments that can't meet them, with a reason."""
    a = httpx2_mock.post(A).mock(return_value=httpx.Response(200, json=completion("from a")))
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("from b")))
    cfg = config()
    cfg["models"]["m"]["deployments"] = [
        {
            "backend": "a",
            "model": "m",
            "capabilities": {"json_schema": False},
            "price": {"input_per_mtok": 1000, "output_per_mtok": 1000},
            "priors": {"ttft_s": 3.0},
        },
        {
            "backend": "b",
            "model": "m",
            "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
            "priors": {"ttft_s": 0.1},
        },
    ]
    async with AsyncRouter.from_config(cfg) as client:
        for hint, why in (
            ({"require": ["json_schema"]}, "json_schema"),
            ({"max_cost_usd": 0.01}, "cost"),
            ({"max_ttft_s": 1.0}, "ttft"),
        ):
            reply = await client.chat.completions.create(model="m", messages=HI, max_tokens=10, route=hint)
            record = route_of(reply)
            assert record.backend == "b", hint
            assert [e.candidate for e in record.excluded] == ["a/m"] and why in record.excluded[0].reason.lower(), (
                hint,
                record.excluded,
            )
        assert a.call_count == 0
        assert route_of(await client.chat.completions.create(model="m", messages=HI)).backend == "a"  # no hint


# --- streams --------------------------------------------------------------------------------------


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize(
    "first",
    [
        {"reasoning_content": "Let me think"},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
    ],
    ids=["reasoning", "tool_call"],
)
async def test_a_reasoning_or_tool_call_delta_commits_the_stream(httpx2_mock: respx.Router, first: Any) -> None:
    """The commit point is the first token of any kind: a break after a reasoning or tool-call delta raises."""
    httpx2_mock.post(A).mock(side_effect=cut_stream(chunk({"role": "assistant"}), chunk(first)))
    b = httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=completion("from b")))
    async with AsyncRouter.from_config(config()) as client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        with pytest.raises(StreamInterruptedError):
            async for _ in stream:
                pass
    assert b.call_count == 0, "a committed stream fell over silently"


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_break_before_any_token_still_falls_over(httpx2_mock: respx.Router) -> None:
    """The contrast: a role chunk alone is not a token, so a break after it falls over to b."""
    httpx2_mock.post(A).mock(side_effect=cut_stream(chunk({"role": "assistant"})))
    httpx2_mock.post(B).mock(side_effect=lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"},
        content=chunk({"role": "assistant", "content": "from b"}).replace(b'"finish_reason": null', b'"finish_reason": "stop"')
        + b"data: [DONE]\n\n",
    ))  # fmt: skip
    async with AsyncRouter.from_config(config()) as client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "from b"


async def test_stream_interrupted_error_carries_the_usage_reported_so_far(httpx2_mock: respx.Router) -> None:
    """`StreamInterruptedError.usage`: what the provider had reported when the stream broke."""
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    httpx2_mock.post(A).mock(
        side_effect=cut_stream(chunk({"role": "assistant", "content": "Hel"}, usage=usage), chunk({"content": "lo"}))
    )
    async with AsyncRouter.from_config(config()) as client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        with pytest.raises(StreamInterruptedError) as caught:
            async for _ in stream:
                pass
    error = caught.value
    assert error.partial_text == "Hello"
    assert error.usage is not None and (error.usage.prompt_tokens, error.usage.completion_tokens) == (7, 2)


async def test_async_with_stream_drops_the_connection_at_once() -> None:
    """`async with stream:` closes the upstream connection when the block ends, mid-answer."""
    with FaultServer(a=ok("word " * 200, tps=20), b=ok("from b")) as fault:
        cfg = config()
        cfg["backends"] = {n: {"provider": "openai", "base_url": fault.base_url(n)} for n in ("a", "b")}
        async with AsyncRouter.from_config(cfg) as client:
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            async with stream:
                async for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        break
            assert fault.busy_connections("a") <= 1
            started = time.monotonic()
            assert await anyio.to_thread.run_sync(lambda: fault.wait_closed("a", timeout=1.0, busy_only=True))
            assert time.monotonic() - started < 0.5, "the backend kept generating after the block ended"


@pytest.mark.httpx2(assert_all_called=False)
async def test_deepseek_prefix_completion_continues_a_broken_stream(httpx2_mock: respx.Router) -> None:
    """`streams.recover: continue` onto DeepSeek: its beta prefix completion gets the delivered text, and
    the caller sees one answer."""
    httpx2_mock.post(A).mock(side_effect=cut_stream(chunk({"role": "assistant", "content": "Once upon"})))

    def deepseek(request: httpx.Request) -> httpx.Response:
        finish = chunk({"content": " a time."}).replace(b'"finish_reason": null', b'"finish_reason": "stop"')
        body = chunk({"role": "assistant", "content": ""}) + finish + b"data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    prefix = httpx2_mock.post("http://ds.test/beta/chat/completions").mock(side_effect=deepseek)
    cfg = config(streams={"recover": "continue"})
    cfg["backends"]["ds"] = {"provider": "deepseek", "base_url": "http://ds.test", "api_key": "sk-test-calls-ds-3333"}
    cfg["models"]["m"]["deployments"] = [{"backend": "a", "model": "m"}, {"backend": "ds", "model": "deepseek-chat"}]
    async with AsyncRouter.from_config(cfg) as client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Once upon a time."
    last = sent(prefix)["messages"][-1]
    assert last == {"role": "assistant", "content": "Once upon", "prefix": True}
    assert route_of(stream).recovered_after_chars == len("Once upon") and route_of(stream).backend == "ds"
