"""The response cache: complete keys, faithful replay, cross-serving, single-flight, degradation."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from router import AsyncRouter, StreamInterruptedError, route_of
from router.cache import CacheUnavailable
from router.cache.keys import NOT_IN_KEY, cache_key
from router.cache.memory import MemoryStore
from router.errors import CacheMissError

pytestmark = pytest.mark.anyio
URL = "http://a.test/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
TOOL_CHUNKS = [
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"reasoning_content": "think"}, "finish_reason": None}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get", "arguments": '{"a"'},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    },
]


def sse(chunks: list[dict[str, Any]], *, done: bool = True) -> Any:
    async def body() -> AsyncIterator[bytes]:
        for c in chunks:
            yield b"data: " + json.dumps(c).encode() + b"\n\n"
        if done:
            yield b"data: [DONE]\n\n"

    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def completion(text: str = "cached?", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def config(**cache: Any) -> dict[str, Any]:
    return {
        "backends": {"a": {"provider": "openai", "base_url": "http://a.test/v1"}},
        "models": {"m": {"deployments": [{"backend": "a", "model": "m"}]}},
        "cache": {"backend": "memory", **cache},
    }


# --- the key ----------------------------------------------------------------------------------

BASE = {"messages": HI, "temperature": 0, "max_tokens": 10}
RELEVANT = {
    "messages": [{"role": "user", "content": "other"}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "tool_choice": "required",
    "response_format": {"type": "json_object"},
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 11,
    "stop": ["x"],
    "seed": 1,
    "n": 2,
    "logprobs": True,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.1,
    "reasoning_effort": "high",
    "thinking": {"type": "disabled"},  # provider-specific extra_body
}


@given(st.sampled_from(sorted(RELEVANT)))
@settings(max_examples=50, deadline=None)
def test_changing_an_answer_relevant_field_changes_the_key(field: str) -> None:
    assert cache_key(["a/m"], {**BASE, field: RELEVANT[field]}) != cache_key(["a/m"], BASE)


# the README's list of fields that cannot change the answer (spelled here, not read from the code under test)
IGNORED = ["stream", "stream_options", "metadata", "user"]


@given(st.sampled_from(IGNORED), st.sampled_from([True, {"include_usage": True}, {"k": "v"}, "u", 3]))
@settings(max_examples=50, deadline=None)
def test_changing_an_excluded_field_does_not(field: str, value: Any) -> None:
    """The README's ignored fields leave the key as it is."""
    assert cache_key(["a/m"], {**BASE, field: value}) == cache_key(["a/m"], BASE)


def test_no_answer_relevant_field_is_ignored() -> None:
    """Nothing the README lists as part of the key is among the fields the key ignores."""
    assert not set(RELEVANT) & NOT_IN_KEY and not {"max_completion_tokens", "extra_body"} & NOT_IN_KEY


def test_equivalent_spellings_and_order_give_one_key() -> None:
    a = {"messages": HI, "max_tokens": 5, "stop": "x", "temperature": 0, "n": 1, "top_p": None}
    b = {"temperature": 0, "max_completion_tokens": 5, "stop": ["x"], "messages": HI}
    assert cache_key(["a/m", "b/m"], a) == cache_key(["b/m", "a/m"], b)
    assert cache_key(["a/m"], a) != cache_key(["b/m"], a)  # another candidate set, another answer
    assert cache_key(["a/m"], a, namespace="tenant-1") != cache_key(["a/m"], a, namespace="tenant-2")


# --- memory store -------------------------------------------------------------------------------


async def test_memory_store_ttl_and_lru_bounds() -> None:
    store = MemoryStore(max_entries=3, max_bytes=100)
    for i in range(4):
        await store.set(f"k{i}", b"x" * 10, 60)
    assert await store.get("k0") is None and await store.get("k3") == b"x" * 10  # LRU by entries
    await store.get("k1")  # touch: k2 is now the least recently used
    await store.set("big", b"y" * 80, 60)
    assert store.size[1] <= 100 and await store.get("k2") is None  # LRU by bytes
    await store.set("short", b"z", 0.05)
    await anyio.sleep(0.06)
    assert await store.get("short") is None  # TTL


# --- through the router -------------------------------------------------------------------------


async def test_a_deterministic_completion_is_served_from_the_cache(httpx2_mock: respx.Router) -> None:
    upstream = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    async with AsyncRouter.from_config(config()) as router:
        first = await router.chat.completions.create(model="m", messages=HI, temperature=0)
        second = await router.chat.completions.create(model="m", messages=HI, temperature=0, metadata={"x": "y"})
        hot = await router.chat.completions.create(model="m", messages=HI, temperature=0.7)  # not deterministic
    assert upstream.call_count == 2
    assert second.model_dump() == first.model_dump()
    record = route_of(second)
    assert record.cached and record.attempts == [] and record.cache_age_s is not None and record.cost_usd == 0.0
    assert record.usage is not None and record.usage.total_tokens == 5  # usage kept, nothing billed
    assert not route_of(first).cached and not route_of(hot).cached


async def test_a_stream_replays_with_the_same_chunks(httpx2_mock: respx.Router) -> None:
    upstream = httpx2_mock.post(URL).mock(side_effect=sse(TOOL_CHUNKS))
    async with AsyncRouter.from_config(config()) as router:
        results = []
        for _ in range(2):
            stream = await router.chat.completions.create(
                model="m", messages=HI, seed=3, stream=True, stream_options={"include_usage": True}
            )
            results.append(([c.model_dump(exclude_unset=True) for c in [c async for c in stream]], route_of(stream)))
        without_usage = await router.chat.completions.create(model="m", messages=HI, seed=3, stream=True)
        plain = [c async for c in without_usage]
    assert upstream.call_count == 1
    (live, _), (replayed, record) = results
    assert replayed == live == TOOL_CHUNKS  # same boundaries, tool-call deltas, reasoning and usage chunk
    assert record.cached and record.usage is not None and record.usage.completion_tokens == 4
    assert all(c.choices for c in plain)  # the usage chunk only for callers who asked


async def test_stream_and_completion_answer_each_other(httpx2_mock: respx.Router) -> None:
    upstream = httpx2_mock.post(URL).mock(side_effect=sse(TOOL_CHUNKS))
    async with AsyncRouter.from_config(config()) as router:
        stream = await router.chat.completions.create(model="m", messages=HI, seed=3, stream=True)
        _ = [c async for c in stream]
        merged = await router.chat.completions.create(model="m", messages=HI, seed=3)
    assert upstream.call_count == 1 and route_of(merged).cached
    message = merged.choices[0].message
    assert message.content == "Hello" and merged.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and message.tool_calls[0].function.arguments == '{"a": 1}'
    assert message.model_extra == {"reasoning_content": "think"}

    httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion("whole answer")))
    async with AsyncRouter.from_config(config()) as router:
        await router.chat.completions.create(model="m", messages=HI, seed=4)
        stream = await router.chat.completions.create(
            model="m", messages=HI, seed=4, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert route_of(stream).cached
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "whole answer"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None


async def test_failed_interrupted_or_filtered_answers_are_never_stored(httpx2_mock: respx.Router) -> None:
    route = httpx2_mock.post(URL)
    async with AsyncRouter.from_config(config()) as router:
        route.mock(side_effect=sse(TOOL_CHUNKS[:3], done=False))  # cut after the first token
        stream = await router.chat.completions.create(model="m", messages=HI, seed=1, stream=True)
        with pytest.raises(StreamInterruptedError):
            _ = [c async for c in stream]
        route.mock(return_value=httpx.Response(500, json={"error": {"message": "boom"}}))
        with pytest.raises(openai.InternalServerError):
            await router.chat.completions.create(model="m", messages=HI, seed=2)
        route.mock(return_value=httpx.Response(200, json=completion("", finish="content_filter")))
        await router.chat.completions.create(model="m", messages=HI, seed=5)
        route.mock(return_value=httpx.Response(200, json=completion("fresh")))
        again = [await router.chat.completions.create(model="m", messages=HI, seed=s) for s in (2, 5)]
        stream = await router.chat.completions.create(model="m", messages=HI, seed=1)
    assert not any(route_of(r).cached for r in [*again, stream])


async def test_single_flight_makes_one_upstream_call(httpx2_mock: respx.Router) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.1)
        return httpx.Response(200, json=completion())

    upstream = httpx2_mock.post(URL).mock(side_effect=slow)
    replies: list[Any] = []
    async with AsyncRouter.from_config(config()) as router:

        async def one() -> None:
            replies.append(await router.chat.completions.create(model="m", messages=HI, temperature=0))

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(one)
    assert upstream.call_count == 1 and len(replies) == 100
    assert sum(not route_of(r).cached for r in replies) == 1


async def test_single_flight_for_streams(httpx2_mock: respx.Router) -> None:
    def slow_stream(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            await anyio.sleep(0.1)
            for c in TOOL_CHUNKS:
                yield b"data: " + json.dumps(c).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    upstream = httpx2_mock.post(URL).mock(side_effect=slow_stream)
    texts: list[str] = []
    async with AsyncRouter.from_config(config()) as router:

        async def one() -> None:
            stream = await router.chat.completions.create(model="m", messages=HI, seed=9, stream=True)
            texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
    assert upstream.call_count == 1 and texts == ["Hello"] * 20


async def test_per_call_cache_hints(httpx2_mock: respx.Router) -> None:
    upstream = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    async with AsyncRouter.from_config(config()) as router:
        with pytest.raises(openai.APIStatusError) as caught:
            await router.chat.completions.create(
                model="m", messages=HI, temperature=0, route={"cache": "only-if-cached"}
            )
        assert isinstance(caught.value, CacheMissError) and caught.value.status_code == 504
        await router.chat.completions.create(model="m", messages=HI, temperature=0, route={"cache": "no-store"})
        assert upstream.call_count == 1
        await router.chat.completions.create(model="m", messages=HI, temperature=0)
        refreshed = await router.chat.completions.create(
            model="m", messages=HI, temperature=0, route={"cache": "refresh"}
        )
        hit = await router.chat.completions.create(
            model="m", messages=HI, temperature=0, route={"cache": "only-if-cached"}
        )
        short = await router.chat.completions.create(model="m", messages=HI, seed=8, route={"cache_ttl_s": 0.05})
        await anyio.sleep(0.06)
        expired = await router.chat.completions.create(model="m", messages=HI, seed=8)
    assert not route_of(refreshed).cached and route_of(hit).cached
    assert not route_of(short).cached and not route_of(expired).cached
    assert upstream.call_count == 5


async def test_widen_to_every_request_and_alias_override(httpx2_mock: respx.Router) -> None:
    upstream = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    cfg = config(cacheable="all")
    cfg["models"]["nocache"] = {"deployments": [{"backend": "a", "model": "m"}], "cache": {"enabled": False}}
    async with AsyncRouter.from_config(cfg) as router:
        for _ in range(2):
            await router.chat.completions.create(model="m", messages=HI, temperature=0.9)
        for _ in range(2):
            await router.chat.completions.create(model="nocache", messages=HI, temperature=0)
    assert upstream.call_count == 3


class BrokenStore(MemoryStore):
    async def get(self, key: str) -> bytes | None:
        raise CacheUnavailable("redis://cache.invalid: connection refused")

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        raise CacheUnavailable("redis://cache.invalid: connection refused")


async def test_a_broken_store_degrades_to_no_caching_with_one_warning(
    httpx2_mock: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    async with AsyncRouter.from_config(config()) as router:
        assert router.cache is not None
        router.cache.store = BrokenStore()
        with caplog.at_level(logging.WARNING, logger="router"):
            for _ in range(3):
                reply = await router.chat.completions.create(model="m", messages=HI, temperature=0)
                assert reply.choices[0].message.content == "cached?"
    assert upstream.call_count == 3
    assert caplog.text.count("response cache unavailable") == 1


async def test_cache_explain(httpx2_mock: respx.Router) -> None:
    async with AsyncRouter.from_config(config(namespace="t1")) as router:
        assert router.cache is not None
        told = router.cache.explain(["a/m"], {"messages": HI, "temperature": 0.3, "stream": True, "user": "u"})
    assert told["cacheable"] is False and "temperature 0 or a seed" in told["why"]
    assert told["key_fields"] == ["messages", "temperature"] and told["ignored_fields"] == ["stream", "user"]
    assert told["key"].startswith("ir:v1:t1:")


async def test_a_dead_lock_holder_is_waited_out_then_bypassed(httpx2_mock: respx.Router) -> None:
    """Single-flight across processes: if the holder of the key's lock dies, the lock expires and the
    waiting call goes upstream itself instead of hanging."""
    upstream = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    async with AsyncRouter.from_config(config()) as router:
        assert router.cache is not None
        key = cache_key(["a/m"], {"messages": HI, "temperature": 0})
        assert await router.cache.store.acquire(key + ":lock", 0.3)  # a holder that will never release it
        started = anyio.current_time()
        reply = await router.chat.completions.create(model="m", messages=HI, temperature=0)
        waited = anyio.current_time() - started
    assert reply.choices[0].message.content == "cached?" and upstream.call_count == 1
    assert 0.25 <= waited < 2.0


def test_the_v1_key_is_stable() -> None:
    """A `v1` key never changes for the same request: entries stored by another process or an earlier
    release (SQLite, Redis) stay reachable. Changing the key's format must bump `KEY_VERSION`."""
    body = {
        "top_p": None,
        "messages": [{"role": "user", "content": "héllo ✓"}],
        "temperature": 0,
        "seed": 7,
        "stream": True,
    }
    assert cache_key(["b/m", "a/m", "a/m"], body, namespace="t") == (
        "ir:v1:t:707cd039eaf07abc247d89b07e3c98e614a555275cff740d7c56ce6b5b24c894"
    )


@pytest.mark.anyio
async def test_an_answer_stored_while_taking_the_lock_is_used_not_fetched_again() -> None:
    """Single-flight across processes: the holder stores its answer and lets go of the lock between
    a waiter's last look and its taking the lock; the waiter must find the answer, not go upstream."""
    from router.cache import Entry, ResponseCache
    from router.config import CacheConfig

    answer = Entry("completion", 0.0, [{"id": "x"}]).encode()

    class OtherProcessFinishesMidWait:
        """The lock is held elsewhere at first; the answer appears right after the waiter's first look."""

        def __init__(self) -> None:
            self.looks = 0
            self.locks = 0
            self.released: list[str] = []

        async def get(self, key: str) -> bytes | None:
            self.looks += 1
            return None if self.looks == 1 else answer

        async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

        async def delete(self, key: str) -> None: ...

        async def acquire(self, key: str, ttl_s: float) -> bool:
            self.locks += 1
            return self.locks > 1  # held by the other process, then free

        async def release(self, key: str) -> None:
            self.released.append(key)

        async def aclose(self) -> None: ...

    store = OtherProcessFinishesMidWait()
    cache = ResponseCache(CacheConfig(backend="memory"), store=store)  # type: ignore[arg-type]
    assert await cache.join("k", wait_s=5.0) is False  # not the leader: the answer is there
    assert store.released == ["k:lock"] and (await cache.lookup("k")) is not None
