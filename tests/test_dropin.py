"""Drop-in: one test body, run against openai's client and the router on the same llama.cpp server.

The router must give the caller what `openai.AsyncOpenAI` / `openai.OpenAI` give: equal
completions and equal chunk sequences (ids and timings aside), streamed and not, async and sync.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from router import AsyncRouter, Router, route_of

pytestmark = pytest.mark.anyio
PROMPT = [{"role": "user", "content": "Say something."}]
VOLATILE = {"id", "created", "timings", "system_fingerprint"}


def router_config(server: Any) -> dict[str, Any]:
    return {
        "backends": {"local": {"provider": "llamacpp", "base_url": server.base_url}},
        "models": {"tiny": {"deployments": [{"backend": "local", "model": "tiny-llama"}]}},
    }


def stable(dump: dict[str, Any]) -> dict[str, Any]:
    """A response or chunk without what differs between two identical calls: ids, clocks and the
    server's prompt-cache hits (the second call finds the first one's prompt cached)."""
    out = {k: v for k, v in dump.items() if k not in VOLATILE}
    if out.get("usage") and out["usage"].get("prompt_tokens_details"):
        out["usage"] = {**out["usage"], "prompt_tokens_details": None}
    return out


CASES = [
    pytest.param({"max_tokens": 12, "temperature": 0}, id="plain"),
    pytest.param({"max_tokens": 6, "temperature": 0, "logit_bias": {"2": 100}}, id="stop"),
    pytest.param({"max_tokens": 8, "temperature": 0, "n": 2}, id="two-choices"),
]


async def run_async(client: Any, model: str, params: dict[str, Any], stream: bool) -> list[dict[str, Any]]:
    """The test body: the same code for both clients."""
    if not stream:
        reply = await client.chat.completions.create(model=model, messages=PROMPT, **params)
        return [stable(reply.model_dump())]
    chunks = await client.chat.completions.create(model=model, messages=PROMPT, stream=True, **params)
    return [stable(chunk.model_dump()) async for chunk in chunks]


def run_sync(client: Any, model: str, params: dict[str, Any], stream: bool) -> list[dict[str, Any]]:
    """The sync test body: the same code for both clients."""
    if not stream:
        return [stable(client.chat.completions.create(model=model, messages=PROMPT, **params).model_dump())]
    return [
        stable(c.model_dump())
        for c in client.chat.completions.create(model=model, messages=PROMPT, stream=True, **params)
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("params", CASES)
async def test_async_router_equals_async_openai(llama_pair: Any, params: dict[str, Any], stream: bool) -> None:
    server = llama_pair[0]
    direct = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    async with AsyncRouter.from_config(router_config(server)) as router:
        expected = await run_async(direct, "tiny-llama", params, stream)
        got = await run_async(router, "tiny", params, stream)
    await direct.close()
    assert got == expected


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 5, "temperature": 0},
        {"max_tokens": 5, "temperature": 0, "stream_options": {"include_usage": True}},
    ],
    ids=["no-usage", "usage"],
)
async def test_stream_usage_chunk_matches_openai(llama_pair: Any, params: dict[str, Any]) -> None:
    server = llama_pair[0]
    direct = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    async with AsyncRouter.from_config(router_config(server)) as router:
        expected = await run_async(direct, "tiny-llama", params, True)
        got = await run_async(router, "tiny", params, True)
    await direct.close()
    assert got == expected
    assert (got[-1]["choices"] == []) == ("stream_options" in params)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_sync_router_equals_openai(llama_pair: Any, stream: bool) -> None:
    server = llama_pair[1]
    params = {"max_tokens": 10, "temperature": 0}
    direct = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with Router.from_config(router_config(server)) as router:
        expected = run_sync(direct, "tiny-llama", params, stream)
        got = run_sync(router, "tiny", params, stream)
        reply = router.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=3)
    direct.close()
    assert got == expected
    assert route_of(reply).backend == "local" and route_of(reply).usage is not None


def test_sync_router_runs_on_one_loop_thread(llama_pair: Any) -> None:
    """The sync client reuses one background event loop instead of starting one per call."""
    import threading

    before = threading.active_count()
    with Router.from_config(router_config(llama_pair[0])) as router:
        during = threading.active_count()
        for _ in range(5):
            router.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=2)
            assert threading.active_count() == during
    assert during == before + 1
    assert threading.active_count() == before


async def test_errors_are_openai_errors_like_the_sdk(llama_pair: Any) -> None:
    """A prompt longer than the context: the SDK raises BadRequestError, so does the router."""
    server = llama_pair[0]
    long_prompt = [{"role": "user", "content": "x" * 6000}]
    direct = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        await direct.chat.completions.create(model="tiny-llama", messages=long_prompt, max_tokens=4)
    await direct.close()
    async with AsyncRouter.from_config(router_config(server)) as router:
        with pytest.raises(openai.BadRequestError) as caught:
            await router.chat.completions.create(model="tiny", messages=long_prompt, max_tokens=4)
    assert type(caught.value).__name__ == "ContextLengthExceededError"
    assert [a.outcome for a in caught.value.attempts] == ["context_too_long"]  # type: ignore[attr-defined]
