"""README "Shared state": what one process measures steers the others, an outage warns once, and
a concurrency slot held by a process that dies comes back."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from router import AsyncRouter
from tests.fault_server import FaultServer, ok
from tests.redis_server import RedisServer, redis_fixture

ROOT = Path(__file__).resolve().parents[1]
redis_server = redis_fixture()
HI = [{"role": "user", "content": "hi"}]


def only_b(fault: FaultServer, redis: RedisServer, **deployment: Any) -> dict[str, Any]:
    return {
        "backends": {"b": {"provider": "openai", "base_url": fault.base_url("b"), "api_key": "sk-shared-promise-key"}},
        "models": {"m": {"deployments": [{"backend": "b", "model": "m", **deployment}]}},
        "state": {"backend": "redis", "url": redis.url, "refresh_s": 0.05},
        "retry": {"attempts_per_deployment": 1},
        "telemetry": {"otel": "off"},
    }


@pytest.mark.anyio
async def test_another_processs_slower_ttft_and_latency_are_what_this_one_sees(redis_server: RedisServer) -> None:
    """Shared state merges the others' TTFT and latency estimates, keeping the slower one."""
    slow, fast = ok("slow", ttft=0.5), ok("fast")
    with FaultServer(b=[slow, slow, fast]) as fault:
        cfg = only_b(fault, redis_server)
        async with AsyncRouter.from_config(cfg) as first, AsyncRouter.from_config(cfg) as second:
            stream = await first.chat.completions.create(model="m", messages=HI, stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).strip() == "slow"
            await first.chat.completions.create(model="m", messages=HI)
            stream = await second.chat.completions.create(model="m", messages=HI, stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).strip() == "fast"
            await second.chat.completions.create(model="m", messages=HI)
            own = {h.deployment: h for h in await second.health()}["b/m"]
            assert own.requests == 2
            await anyio.sleep(0.3)  # several refreshes
            merged = {h.deployment: h for h in await second.health()}["b/m"]
    assert merged.ttft_s is not None and merged.ttft_s >= 0.35, "the other process's slow TTFT was not merged"
    assert merged.latency_s is not None and merged.latency_s >= 0.35, "the other process's slow latency was not merged"


@pytest.mark.anyio
async def test_a_redis_outage_logs_one_warning_however_many_calls(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis outage degrades to local state with one warning (not one per call or refresh)."""
    with FaultServer(b=ok("from b")) as fault:
        async with AsyncRouter.from_config(only_b(fault, redis_server, max_concurrency=4)) as router:
            with caplog.at_level(logging.INFO, logger="router"):
                redis_server.kill()
                for _ in range(5):
                    reply = await router.chat.completions.create(model="m", messages=HI)
                    assert reply.choices[0].message.content == "from b"
                await anyio.sleep(0.3)  # several background refreshes fail too
                warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "shared state" in r.message]
                assert len(warned) == 1, [r.message for r in warned]
                redis_server.start()
                await anyio.sleep(0.3)
                await router.chat.completions.create(model="m", messages=HI)
                assert any("shared state available again" in r.message for r in caplog.records)
                redis_server.kill()
                await router.chat.completions.create(model="m", messages=HI)
                await anyio.sleep(0.2)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "shared state" in r.message]
    assert len(warned) == 2  # a second outage, after recovery, warns again


HOLDER = textwrap.dedent("""
    import sys, anyio
    from router.path.shared import SharedState
    async def main():
        state = SharedState(sys.argv[1], lease_s=float(sys.argv[2]))
        token = await state.take_slot("b/m", 1)
        print("took" if token and token != "local" else "refused", flush=True)
        await anyio.sleep(60)  # killed while holding it
    anyio.run(main)
""")


@pytest.mark.anyio
async def test_a_slot_held_by_a_process_that_dies_comes_back_when_its_lease_expires(redis_server: RedisServer) -> None:
    """`max_concurrency` across processes: a slot is a lease, so a killed holder does not keep it."""
    from router.path.shared import SharedState

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_server.url, "1.0"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "took"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=5)
        died = time.monotonic()
        state = SharedState(redis_server.url, lease_s=1.0)
        try:
            assert await state.take_slot("b/m", 1) is None, "the dead process's slot was free at once"
            while (token := await state.take_slot("b/m", 1)) is None:
                assert time.monotonic() - died < 3.0, "the dead holder's slot never came back"
                await anyio.sleep(0.05)
            assert token != "local" and time.monotonic() - died > 0.5
        finally:
            await state.aclose()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
