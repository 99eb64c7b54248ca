"""Routing across real llama.cpp servers: a killed backend, early close, the `openai` kind."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import openai
import pytest

from router import AsyncRouter, route_of

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


def two_backends(first: Any, second: Any, kind: str = "llamacpp") -> dict[str, Any]:
    return {
        "backends": {
            "first": {"provider": kind, "base_url": first.base_url, "api_key": "local-key"},
            "second": {"provider": kind, "base_url": second.base_url, "api_key": "local-key"},
        },
        "models": {
            "tiny": {
                "deployments": [
                    {"backend": "first", "model": "tiny-llama"},
                    {"backend": "second", "model": "tiny-llama"},
                ]
            }
        },
    }


@pytest.mark.parametrize("kind", ["llamacpp", "openai"])
async def test_killed_backend_falls_over(llama_server: Any, llama_pair: Any, kind: str) -> None:
    async with AsyncRouter.from_config(two_backends(llama_server, llama_pair[0], kind)) as router:
        before = await router.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
        llama_server.kill()
        after = await router.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
        stream = await router.chat.completions.create(model="tiny", messages=HI, max_tokens=4, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert route_of(before).backend == "first"
    assert route_of(after).backend == "second" and after.usage is not None and after.usage.completion_tokens == 4
    assert [a.outcome for a in route_of(after).attempts] == ["connection", "ok"]
    assert len(text) == 4 and route_of(stream).backend == "second"


async def test_all_backends_dead_raises_connection_error(llama_server: Any, tiny_model: Any) -> None:
    llama_server.kill()
    async with AsyncRouter.from_config(two_backends(llama_server, llama_server)) as router:
        with pytest.raises(openai.APIConnectionError) as caught:
            await router.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
    assert len(caught.value.attempts) == 2  # type: ignore[attr-defined]


async def _busy_slots(server: Any) -> int:
    async with httpx2.AsyncClient() as client:
        metrics = (await client.get(server.root_url + "/metrics")).text
    for line in metrics.splitlines():
        if line.startswith("llamacpp:requests_processing"):
            return int(float(line.split()[-1]))
    raise AssertionError("no llamacpp:requests_processing in /metrics")


async def test_closing_a_stream_early_releases_the_connection(llama_server: Any) -> None:
    """After `close()` the server stops generating: the connection was dropped, not drained."""
    config = two_backends(llama_server, llama_server)
    async with AsyncRouter.from_config(config) as router:
        stream = await router.chat.completions.create(model="tiny", messages=HI, max_tokens=3500, stream=True)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        assert await _busy_slots(llama_server) == 1
        started = time.perf_counter()
        await stream.close()
        while await _busy_slots(llama_server) and time.perf_counter() - started < 2:
            await anyio.sleep(0.01)
        assert await _busy_slots(llama_server) == 0
        assert time.perf_counter() - started < 1.0
    assert route_of(stream).complete
