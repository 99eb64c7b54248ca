"""Opt-in hedging: a slow first candidate gets a duplicate on the next; the first answer wins."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
import respx

from router import AsyncRouter, ConfigError, route_of

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
OK = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


def after(seconds: float, counter: dict[str, int], name: str) -> Any:
    async def respond(request: httpx.Request) -> httpx.Response:
        counter[name] += 1
        await anyio.sleep(seconds)
        return httpx.Response(200, json={**OK, "model": name})

    return respond


def config(**hedge: Any) -> dict[str, Any]:
    return {
        "backends": {
            "slow": {"provider": "openai", "base_url": "http://slow.test/v1"},
            "fast": {"provider": "openai", "base_url": "http://fast.test/v1"},
        },
        "models": {
            "m": {"hedge": hedge, "deployments": [{"backend": "slow", "model": "m"}, {"backend": "fast", "model": "m"}]}
        },
    }


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_slow_first_candidate_is_hedged_and_the_loser_cancelled(httpx2_mock: respx.Router) -> None:
    seen = {"slow": 0, "fast": 0}
    httpx2_mock.post("http://slow.test/v1/chat/completions").mock(side_effect=after(1.0, seen, "slow"))
    httpx2_mock.post("http://fast.test/v1/chat/completions").mock(side_effect=after(0.01, seen, "fast"))
    async with AsyncRouter.from_config(config(after_s=0.05, max_extra_fraction=1.0)) as router:
        started = time.perf_counter()
        reply = await router.chat.completions.create(model="m", messages=HI)
        waited = time.perf_counter() - started
        in_flight = router.stats.view(anyio.current_time()).get("slow/m")
    record = route_of(reply)
    assert waited < 0.5 and record.backend == "fast" and record.hedged
    assert [(a.backend, a.outcome) for a in record.attempts] == [("slow", "hedge_lost"), ("fast", "ok")]
    assert seen == {"slow": 1, "fast": 1}
    assert in_flight is not None and in_flight.in_flight == 0  # the cancelled loser gave its slot back


@pytest.mark.httpx2(assert_all_called=False)
async def test_no_hedge_when_the_first_answers_in_time(httpx2_mock: respx.Router) -> None:
    seen = {"slow": 0, "fast": 0}
    httpx2_mock.post("http://slow.test/v1/chat/completions").mock(side_effect=after(0.0, seen, "slow"))
    httpx2_mock.post("http://fast.test/v1/chat/completions").mock(side_effect=after(0.0, seen, "fast"))
    async with AsyncRouter.from_config(config(after_s=0.2, max_extra_fraction=1.0)) as router:
        for _ in range(5):
            record = route_of(await router.chat.completions.create(model="m", messages=HI))
            assert record.backend == "slow" and not record.hedged
    assert seen == {"slow": 5, "fast": 0}


async def test_duplicates_stay_within_the_budgeted_fraction(httpx2_mock: respx.Router) -> None:
    seen = {"slow": 0, "fast": 0}
    httpx2_mock.post("http://slow.test/v1/chat/completions").mock(side_effect=after(0.08, seen, "slow"))
    httpx2_mock.post("http://fast.test/v1/chat/completions").mock(side_effect=after(0.0, seen, "fast"))
    async with AsyncRouter.from_config(config(after_s=0.01, max_extra_fraction=0.2)) as router:
        records = [route_of(await router.chat.completions.create(model="m", messages=HI)) for _ in range(20)]
    hedged = sum(r.hedged for r in records)
    assert 3 <= hedged <= 4 and seen["fast"] == hedged  # within 20 calls × 0.2
    assert seen["slow"] == 20


@pytest.mark.httpx2(assert_all_called=False)
async def test_streams_are_hedged_on_the_first_token(httpx2_mock: respx.Router) -> None:
    def stream_after(seconds: float) -> Any:
        async def body() -> Any:
            await anyio.sleep(seconds)
            yield (
                b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
                b'[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
            )

        return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    httpx2_mock.post("http://slow.test/v1/chat/completions").mock(side_effect=stream_after(2.0))
    httpx2_mock.post("http://fast.test/v1/chat/completions").mock(side_effect=stream_after(0.0))
    async with AsyncRouter.from_config(config(after_s=0.05, max_extra_fraction=1.0)) as router:
        started = time.perf_counter()
        stream = await router.chat.completions.create(model="m", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "hi" and time.perf_counter() - started < 0.5
    assert route_of(stream).hedged and route_of(stream).backend == "fast"


def test_hedge_needs_a_delay() -> None:
    with pytest.raises(ConfigError, match="hedge needs after_s, after_percentile"):
        AsyncRouter.from_config(config(max_extra_fraction=0.1))
