"""Shared state through a real Redis: three OS processes route as one.

A `max_concurrency` holds across processes (the slots are taken atomically in Redis), and a
circuit opened by one process is respected by the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from providers import FailureKind
from router import AsyncRouter
from router.config import CircuitConfig
from router.path.circuit import Circuits, CircuitState
from router.path.shared import SharedState
from tests.fault_server import FaultServer, ok, status
from tests.redis_server import RedisServer, redis_fixture

ROOT = Path(__file__).resolve().parents[1]
redis_server = redis_fixture()

WORKER = textwrap.dedent("""
    import json, sys, anyio
    from router import AsyncRouter, route_of
    config, calls, pause = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    async def main():
        out = []
        async with AsyncRouter.from_config(config) as router:
            await anyio.sleep(pause)  # let the shared state sync once
            async def one():
                try:
                    reply = await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                    record = route_of(reply)
                    out.append({"backend": record.backend, "excluded": [e.reason for e in record.excluded]})
                except Exception as error:
                    out.append({"error": type(error).__name__})
            async with anyio.create_task_group() as group:
                for _ in range(calls):
                    group.start_soon(one)
        print(json.dumps(out))
    anyio.run(main)
""")


def workers(config: dict[str, Any], *, processes: int, calls: int, pause: float = 0.4) -> list[list[dict[str, Any]]]:
    """Run `processes` routers at once, each making `calls` concurrent calls; their results."""
    running = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(config), str(calls), str(pause)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    return results


def max_overlap(starts: list[float], hold: float) -> int:
    """The most requests in flight at once, given each holds the backend for `hold` seconds."""
    events = sorted([(t, 1) for t in starts] + [(t + hold - 1e-3, -1) for t in starts], key=lambda e: (e[0], e[1]))
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def config(fault: FaultServer, redis: RedisServer, **capped: Any) -> dict[str, Any]:
    return {
        "backends": {  # a key, so the suite's key grep has something to find in the workers' logs
            n: {"provider": "openai", "base_url": fault.base_url(n), "api_key": f"sk-shared-{n}-test-key"}
            for n in fault.names
        },
        "models": {"m": {"deployments": [{"backend": "a", "model": "m", **capped}, {"backend": "b", "model": "m"}]}},
        "state": {"backend": "redis", "url": redis.url, "refresh_s": 0.05},
        "circuit": {"failures": 2, "cooldown_s": 30},
        "retry": {"attempts_per_deployment": 1},
        "timeouts": {"first_token_s": 5},
    }


def test_max_concurrency_holds_across_three_processes(redis_server: RedisServer) -> None:
    hold = 0.4
    with FaultServer(a=ok("from a", ttft=hold), b=ok("from b")) as fault:
        results = workers(config(fault, redis_server, max_concurrency=2), processes=3, calls=4)
        starts = [r.at for r in fault.requests("a")]
    served = [r["backend"] for result in results for r in result]
    assert len(served) == 12 and "error" not in str(results)
    assert max_overlap(starts, hold) <= 2, "the cap was exceeded across processes"
    assert served.count("a") >= 2 and served.count("b") == 12 - served.count("a")


def test_a_circuit_opened_by_one_process_is_respected_by_the_others(redis_server: RedisServer) -> None:
    with FaultServer(a=status(503), b=ok("from b")) as fault:
        cfg = config(fault, redis_server)
        first = workers(cfg, processes=1, calls=3, pause=0.1)[0]  # a fails twice: its circuit opens
        seen_after_first = fault.count("a")
        others = workers(cfg, processes=2, calls=3, pause=0.4)
        assert fault.count("a") == seen_after_first, "the other processes still sent to the open circuit"
    assert seen_after_first in (2, 3) and all(r["backend"] == "b" for r in first)  # 3 concurrent calls
    reasons = [reason for result in others for r in result for reason in r["excluded"]]
    assert len(reasons) == 6 and all("opened by another process" in reason for reason in reasons)


@pytest.mark.anyio
async def test_a_redis_outage_degrades_to_local_state_and_recovers(redis_server: RedisServer) -> None:
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(config(fault, redis_server, max_concurrency=2)) as router:
            redis_server.kill()
            started = time.monotonic()
            reply = await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "from a" and time.monotonic() - started < 2.0
            redis_server.start()
            await anyio.sleep(0.2)
            reply = await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "from a"
            assert router.shared is not None and not router.shared._down


@pytest.mark.anyio
async def test_headroom_latency_and_in_flight_are_shared(redis_server: RedisServer) -> None:
    """Two routers (as two processes would): what one learns, the other ranks by, without Redis in the ranking."""
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"}
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "from a"}, "finish_reason": "stop"}],
    }
    with FaultServer(a=status(200, body=answer, headers=exhausted), b=ok("from b", ttft=1.0)) as fault:
        cfg = config(fault, redis_server)
        async with AsyncRouter.from_config(cfg) as first, AsyncRouter.from_config(cfg) as second:
            hi = [{"role": "user", "content": "hi"}]
            await first.chat.completions.create(model="m", messages=hi)  # a answers, but its headroom is gone

            async with anyio.create_task_group() as group:
                group.start_soon(lambda: first.chat.completions.create(model="m", messages=hi))  # holds b for 1 s
                await anyio.sleep(0.3)  # a few refreshes
                seen = second.stats.view(anyio.current_time())
                a_view, b_view = seen.get("a/m"), seen.get("b/m")
                assert a_view is not None and a_view.remaining_requests == 0
                assert b_view is not None and b_view.in_flight == 1  # the other router's request
                record = await second.explain(model="m", messages=hi)
                assert [line.candidate for line in record.ranking] == ["b/m", "a/m"]  # a ranks last until reset
    assert fault.count("a") == 1


@pytest.mark.anyio
async def test_a_circuit_closed_by_a_load_probe_is_withdrawn_from_redis(redis_server: RedisServer) -> None:
    """Closed early (its server answers load probes again), a circuit is not re-opened by its own opening
    read back from Redis, and the other processes stop re-applying it."""
    here, there = Circuits(CircuitConfig(failures=1, cooldown_s=30, jitter=0)), Circuits()
    shared, peer = SharedState(redis_server.url, refresh_s=0.05), SharedState(redis_server.url, refresh_s=0.05)
    here.on_open, here.on_close = shared.circuit_opened, shared.circuit_closed
    try:
        now = anyio.current_time()
        here.record("a/m", now, failure=FailureKind.SERVER_ERROR)
        await shared.sync(here, ["a/m"])
        await peer.sync(there, ["a/m"])
        assert there.view("a/m", now).state is CircuitState.OPEN  # shared, as before
        assert here.server_answered("a/m", now)
        await shared.sync(here, ["a/m"])
        assert here.view("a/m", anyio.current_time()).state is CircuitState.CLOSED
        fresh = Circuits()
        await peer.sync(fresh, ["a/m"])
        assert fresh.view("a/m", anyio.current_time()).state is CircuitState.CLOSED
    finally:
        await shared.aclose()
        await peer.aclose()


@pytest.mark.anyio
async def test_a_held_slot_is_renewed_while_its_holder_syncs_and_freed_when_it_stops(redis_server: RedisServer) -> None:
    """A slot is a short lease its holder renews at every sync: a stream longer than the lease keeps
    its slot, and a process that dies (stops syncing) frees it within one lease."""
    holder, other = SharedState(redis_server.url, lease_s=0.5), SharedState(redis_server.url, lease_s=0.5)
    try:
        token = await holder.take_slot("a/m", 1)
        assert token is not None
        for _ in range(8):  # 1.2 s: more than two leases, renewed every 0.15 s
            await anyio.sleep(0.15)
            await holder.sync(Circuits(), ["a/m"])
            assert await other.take_slot("a/m", 1) is None, "a renewed lease expired"
        await anyio.sleep(0.7)  # the holder "dies": no more renewals
        taken = await other.take_slot("a/m", 1)
        assert taken is not None
        await other.give_slot("a/m", taken)
        await holder.give_slot("a/m", token)  # a late give-back of an expired lease is harmless
        assert await other.take_slot("a/m", 1) is not None
    finally:
        await holder.aclose()
        await other.aclose()
