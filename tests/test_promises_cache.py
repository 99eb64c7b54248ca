"""README "Caching", through the router on loopback backends: the key follows the candidate set after
`only`/`exclude`, API keys are in neither a key nor a stored entry, `lock_wait_s` bounds the wait
on a live but slow holder, and a broken store is retried and recovers."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import router.cache
from router import AsyncRouter, route_of
from tests.fault_server import FaultServer, ok
from tests.redis_server import RedisServer, redis_fixture

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
redis_server = redis_fixture()


def cached(fault: FaultServer, cache: dict[str, Any], *, key_a: str = "sk-test-cache-a-0001") -> dict[str, Any]:
    return {
        "backends": {
            "a": {"provider": "openai", "base_url": fault.base_url("a"), "api_key": key_a},
            "b": {"provider": "openai", "base_url": fault.base_url("b"), "api_key": "sk-test-cache-b-0002"},
        },
        "models": {"m": {"deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}]}},
        "cache": cache,
        "retry": {"attempts_per_deployment": 1},
        "telemetry": {"otel": "off"},
    }


async def ask(client: AsyncRouter, **kwargs: Any) -> tuple[str, bool]:
    reply = await client.chat.completions.create(model="m", messages=HI, temperature=0, **kwargs)
    return reply.choices[0].message.content or "", route_of(reply).cached


async def test_the_key_follows_the_candidate_set_after_only_and_exclude() -> None:
    """Hints that change the candidates change the key; two spellings of one candidate set share it."""
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(cached(fault, {"backend": "memory"})) as client:
            assert await ask(client) == ("from a", False)
            assert await ask(client, route={"exclude": ["a"]}) == ("from b", False)  # {b}: not a's answer
            assert await ask(client, route={"only": ["b"]}) == ("from b", True)  # {b} again, spelled otherwise
            assert await ask(client, route={"exclude": ["b"]}) == ("from a", False)  # {a} ≠ {a, b}
            assert await ask(client, route={"only": ["a"]}) == ("from a", True)
            assert await ask(client) == ("from a", True)
    assert (fault.count("a"), fault.count("b")) == (2, 1)


async def test_no_api_key_in_a_key_or_a_stored_entry(tmp_path: Path) -> None:
    """Routers with other keys for the same backends share entries; the stored bytes hold no key."""
    path = tmp_path / "cache.sqlite3"
    with FaultServer(a=ok("the answer"), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(cached(fault, {"backend": "sqlite", "path": str(path)})) as client:
            assert await ask(client) == ("the answer", False)
            stream = await client.chat.completions.create(model="m", messages=HI, seed=1, stream=True)
            assert "answer" in "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        other = cached(fault, {"backend": "sqlite", "path": str(path)}, key_a="sk-test-cache-a-OTHER")
        async with AsyncRouter.from_config(other) as client:
            assert await ask(client) == ("the answer", True)  # the key is not part of the cache key
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("cache.sqlite3*"))  # the file, its WAL too
    assert stored.count(b"the answer") >= 1 and b"chat.completion.chunk" in stored  # both entries are there
    for key in (b"sk-test-cache-a-0001", b"sk-test-cache-b-0002", b"sk-test-cache-a-OTHER", b"Bearer", b"sk-test"):
        assert key not in stored


async def test_lock_wait_s_bounds_the_wait_on_a_live_but_slow_holder(tmp_path: Path) -> None:
    """Two routers sharing a SQLite cache: the second waits `lock_wait_s` for the first's upstream
    call, then calls upstream itself; with a longer wait it gets the first's answer."""
    for wait_s, expected_upstream in ((0.2, 2), (5.0, 1)):
        path = tmp_path / f"cache-{wait_s}.sqlite3"
        with FaultServer(a=ok("slow answer", ttft=1.0), b=ok("from b")) as fault:
            cfg = cached(fault, {"backend": "sqlite", "path": str(path), "lock_wait_s": wait_s})
            async with AsyncRouter.from_config(cfg) as first, AsyncRouter.from_config(cfg) as second:
                results: dict[str, tuple[str, bool]] = {}

                async def call(name: str, client: AsyncRouter, results: dict[str, Any] = results) -> None:
                    results[name] = await ask(client)

                async with anyio.create_task_group() as group:
                    group.start_soon(call, "first", first)
                    with anyio.fail_after(5):
                        while fault.count("a") == 0:  # first holds the lock, its upstream call under way
                            await anyio.sleep(0.01)
                    group.start_soon(call, "second", second)
            starts = [r.at for r in fault.requests("a")]
        assert len(starts) == expected_upstream, (wait_s, starts)
        assert results["first"] == ("slow answer", False)
        if expected_upstream == 2:
            assert 0.2 <= starts[1] - starts[0] < 0.9, starts  # waited lock_wait_s, not the holder's whole call
            assert results["second"] == ("slow answer", False)
        else:
            assert results["second"] == ("slow answer", True)


async def test_a_broken_store_degrades_with_one_warning_and_recovers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: calls are served uncached with one warning; once it is back the cache works again."""
    monkeypatch.setattr(router.cache, "_RETRY_BROKEN_S", 0.3)  # "every few seconds", shortened for the test
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        cfg = cached(fault, {"backend": "redis", "url": redis_server.url})
        async with AsyncRouter.from_config(cfg) as client:
            assert await ask(client) == ("from a", False)
            assert await ask(client) == ("from a", True)
            with caplog.at_level(logging.INFO, logger="router"):
                redis_server.kill()
                started = time.monotonic()
                for _ in range(4):
                    assert await ask(client) == ("from a", False)  # served, never failing for the cache
                    await anyio.sleep(0.1)
                assert time.monotonic() - started < 3
                warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "cache" in r.message]
                assert len(warned) == 1, [r.message for r in warned]
                redis_server.start()
                await anyio.sleep(0.4)  # past the retry interval
                assert await ask(client) == ("from a", False)  # the store is empty again: stored now
                assert await ask(client) == ("from a", True)
            assert any("response cache available again" in r.message for r in caplog.records)
