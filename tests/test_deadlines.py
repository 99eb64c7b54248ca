"""Adaptive first-token deadlines: a fast backend that goes quiet is abandoned fast; a slow one is not cut off."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import respx

from router import AsyncRouter, route_of

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


def stream_after(delay: float, *, silent: bool = False) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        await anyio.sleep(delay)
        if silent:
            for _ in range(100):
                yield b": keep-alive\n\n"
                await anyio.sleep(0.05)
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        }
        yield b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def config(**timeouts: Any) -> dict[str, Any]:
    return {
        "backends": {
            "a": {"provider": "openai", "base_url": "http://a.test/v1"},
            "b": {"provider": "openai", "base_url": "http://b.test/v1"},
        },
        "models": {"m": {"deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}]}},
        "timeouts": {"first_token_s": 5, "adaptive_floor_s": 0.1, "adaptive_factor": 3, **timeouts},
    }


async def consume(router: AsyncRouter) -> Any:
    stream = await router.chat.completions.create(model="m", messages=HI, stream=True)
    async for _ in stream:
        pass
    return route_of(stream)


async def test_a_fast_backend_that_goes_quiet_is_abandoned_in_its_adaptive_deadline(
    httpx2_mock: respx.Router,
) -> None:
    quiet = {"now": False}
    httpx2_mock.post("http://a.test/v1/chat/completions").mock(
        side_effect=lambda request: stream_after(0.0, silent=quiet["now"])
    )
    httpx2_mock.post("http://b.test/v1/chat/completions").mock(side_effect=lambda request: stream_after(0.0))
    async with AsyncRouter.from_config(config()) as router:
        for _ in range(10):
            assert (await consume(router)).backend == "a"
        quiet["now"] = True
        started = time.perf_counter()
        record = await consume(router)
        waited = time.perf_counter() - started
    assert record.backend == "b" and record.attempts[0].outcome == "timeout"
    assert waited < 0.6, f"waited {waited:.2f}s: the 5 s configured deadline applied, not the adaptive 0.1 s"


async def test_a_slow_but_working_backend_is_not_cut_off(httpx2_mock: respx.Router) -> None:
    httpx2_mock.post("http://a.test/v1/chat/completions").mock(side_effect=lambda request: stream_after(0.12))
    async with AsyncRouter.from_config(config(adaptive_floor_s=0.05)) as router:
        records = [await consume(router) for _ in range(10)]
    assert all(r.backend == "a" and len(r.attempts) == 1 for r in records)


async def test_adaptive_deadlines_can_be_turned_off(httpx2_mock: respx.Router) -> None:
    """`adaptive_first_token: false`: a fast backend that goes quiet is waited on for the configured deadline."""
    quiet = {"now": False}
    httpx2_mock.post("http://a.test/v1/chat/completions").mock(
        side_effect=lambda request: stream_after(0.0, silent=quiet["now"])
    )
    httpx2_mock.post("http://b.test/v1/chat/completions").mock(side_effect=lambda request: stream_after(0.0))
    async with AsyncRouter.from_config(config(adaptive_first_token=False, first_token_s=0.8)) as router:
        for _ in range(10):
            assert (await consume(router)).backend == "a"
        quiet["now"] = True
        started = time.perf_counter()
        record = await consume(router)
        waited = time.perf_counter() - started
    assert record.backend == "b" and [a.outcome for a in record.attempts] == ["timeout", "ok"]
    assert waited >= 0.75, f"gave up after {waited:.2f}s: an adaptive deadline (about 0.1 s) applied though it is off"


async def test_a_non_streamed_backend_that_sends_headers_then_nothing_is_left_once_its_latency_is_known() -> None:
    """DeepSeek-style headers-then-blank-lines, never answering: after 10 quick answers the call moves on
    within the adaptive deadline instead of waiting out the call's total deadline."""
    from tests.fault_server import FaultServer, ok, stall_after

    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        cfg = {
            "backends": {n: {"provider": "openai", "base_url": fault.base_url(n)} for n in fault.names},
            "models": {"m": {"deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}]}},
            "timeouts": {"first_token_s": 5, "total_s": 10, "adaptive_floor_s": 0.2},
        }
        async with AsyncRouter.from_config(cfg) as router:
            for _ in range(10):
                await router.chat.completions.create(model="m", messages=HI)
            fault.script("a", stall_after(0, 5.0, keepalive_every=0.1))
            started = time.perf_counter()
            reply = await router.chat.completions.create(model="m", messages=HI)
            waited = time.perf_counter() - started
    assert reply.choices[0].message.content == "from b" and waited < 1.0
    assert [a.outcome for a in route_of(reply).attempts] == ["timeout", "ok"]
