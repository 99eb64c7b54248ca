"""README "Routing rules" and "Reloading the config": each `set` key a rule can carry takes effect on
the calls it matches (and only those), and a reload keeps circuits while honouring a changed
`cache` or `state` section. Real loopback backends (the fault server)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import openai
import pytest

from router import AsyncRouter, StreamInterruptedError, route_of
from tests.fault_server import FaultServer, cut_after, ok, silent, status
from tests.redis_server import RedisServer, redis_fixture

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
redis_server = redis_fixture()


def two(fault: FaultServer, rules: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """Alias `m` on a then b (ordered); fast timeouts, no backoff."""
    base: dict[str, Any] = {
        "backends": {
            n: {"provider": "openai", "base_url": fault.base_url(n), "api_key": f"sk-test-promise-{n}-51ab"}
            for n in ("a", "b")
        },
        "models": {"m": {"deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}]}},
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.0, "backoff_max_s": 0.0},
        "timeouts": {"first_token_s": 5, "stall_s": 5, "total_s": 3},
        "telemetry": {"otel": "off"},
        "rules": rules or [],
    }
    base.update(overrides)
    return base


async def text_of(stream: Any) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_a_rules_retry_sets_the_exact_number_of_attempts() -> None:
    """`set.retry` (field by field): 3 tries of a, then b, 5 in all — the rule's numbers, exactly."""
    rules = [{"name": "persist", "match": {"tags": ["persist"]}, "set": {"retry": {"attempts_per_deployment": 3}}}]
    rules[0]["set"]["retry"]["max_attempts"] = 5
    with FaultServer(a=status(500), b=status(500)) as fault:
        async with AsyncRouter.from_config(two(fault, rules)) as router:
            with pytest.raises(openai.InternalServerError) as plain:
                await router.chat.completions.create(model="m", messages=HI)
            assert (fault.count("a"), fault.count("b")) == (1, 1)  # the config's one try each
            with pytest.raises(openai.InternalServerError) as ruled:
                await router.chat.completions.create(model="m", messages=HI, route={"tags": ["persist"]})
            assert (fault.count("a"), fault.count("b")) == (1 + 3, 1 + 2)
    assert len(plain.value.attempts) == 2  # type: ignore[attr-defined]
    assert [a.backend for a in ruled.value.attempts] == ["a", "a", "a", "b", "b"]  # type: ignore[attr-defined]


async def test_a_rules_timeouts_apply_to_the_calls_it_matches() -> None:
    """`set.timeouts`: a 0.2 s first-token deadline abandons a silent backend fast (the config's 5 s would not)."""
    rules = [{"name": "hurry", "match": {"tags": ["hurry"]}, "set": {"timeouts": {"first_token_s": 0.2}}}]
    with FaultServer(a=silent(hold_s=4), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(two(fault, rules)) as router:
            started = time.monotonic()
            reply = await router.chat.completions.create(model="m", messages=HI, route={"tags": ["hurry"]})
            took = time.monotonic() - started
    assert reply.choices[0].message.content == "from b" and took < 1.5
    assert [(a.backend, a.outcome) for a in route_of(reply).attempts] == [("a", "timeout"), ("b", "ok")]


async def test_a_rules_cache_override_turns_caching_off_for_its_calls() -> None:
    """`set.cache: {enabled: false}`: matching calls always go upstream; the others are cached."""
    rules = [{"name": "fresh", "match": {"tags": ["fresh"]}, "set": {"cache": {"enabled": False}}}]
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        cfg = two(fault, rules, cache={"backend": "memory", "cacheable": "all"})
        async with AsyncRouter.from_config(cfg) as router:
            fresh = [
                route_of(await router.chat.completions.create(model="m", messages=HI, route={"tags": ["fresh"]}))
                for _ in range(2)
            ]
            assert fault.count("a") == 2 and not any(r.cached for r in fresh)
            other = [{"role": "user", "content": "other"}]
            cached = [route_of(await router.chat.completions.create(model="m", messages=other)) for _ in range(2)]
            assert fault.count("a") == 3 and [r.cached for r in cached] == [False, True]


async def test_a_rules_hedge_turns_hedging_on_and_false_turns_it_off() -> None:
    """`set.hedge`: settings hedge the matching calls; `false` stops an alias's hedging for them."""
    rules = [
        {"name": "hedge", "match": {"tags": ["hedge"]}, "set": {"hedge": {"after_s": 0.05, "max_extra_fraction": 1}}},
        {"name": "calm", "match": {"tags": ["calm"]}, "set": {"hedge": False}},
    ]
    with FaultServer(a=ok("from a", ttft=0.6), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(two(fault, rules)) as router:
            reply = await router.chat.completions.create(model="m", messages=HI, route={"tags": ["hedge"]})
            record = route_of(reply)
            assert record.hedged and record.backend == "b"
            reply = await router.chat.completions.create(model="m", messages=HI)  # no rule, no hedge
            assert not route_of(reply).hedged and route_of(reply).backend == "a"
        cfg = two(fault, rules)
        cfg["models"]["m"]["hedge"] = {"after_s": 0.05, "max_extra_fraction": 1}
        async with AsyncRouter.from_config(cfg) as router:
            assert route_of(await router.chat.completions.create(model="m", messages=HI)).hedged
            b_before = fault.count("b")
            reply = await router.chat.completions.create(model="m", messages=HI, route={"tags": ["calm"]})
            assert not route_of(reply).hedged and route_of(reply).backend == "a" and fault.count("b") == b_before


async def test_a_rules_streams_buffer_falls_over_after_the_first_token() -> None:
    """`set.streams: {commit: buffer}`: a matching stream cut midway falls over; others raise the break."""
    rules = [{"name": "whole", "match": {"tags": ["whole"]}, "set": {"streams": {"commit": "buffer"}}}]
    with FaultServer(a=cut_after(2, "one two three four"), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(two(fault, rules)) as router:
            stream = await router.chat.completions.create(
                model="m", messages=HI, stream=True, route={"tags": ["whole"]}
            )
            assert (await text_of(stream)).strip() == "from b"
            stream = await router.chat.completions.create(model="m", messages=HI, stream=True)
            with pytest.raises(StreamInterruptedError):
                await text_of(stream)


async def test_a_reload_keeps_open_circuits() -> None:
    """`reload()`: a deployment that still exists keeps its open circuit (it is not tried again)."""
    with FaultServer(a=status(503), b=ok("from b")) as fault:
        cfg = two(fault, circuit={"failures": 2, "cooldown_s": 30})
        async with AsyncRouter.from_config(cfg) as router:
            for _ in range(2):
                await router.chat.completions.create(model="m", messages=HI)
            assert fault.count("a") == 2
            changed = two(fault, circuit={"failures": 2, "cooldown_s": 30}, timeouts={"total_s": 4})
            await router.reload(changed)
            reply = await router.chat.completions.create(model="m", messages=HI)
    assert fault.count("a") == 2, "the reload forgot a's open circuit"
    assert next(e.reason for e in route_of(reply).excluded if e.candidate == "a/m").startswith("circuit open")


async def test_a_reload_honours_a_changed_cache_section() -> None:
    """`reload()` with a new `cache` section caches from then on; without one, caching stops."""
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        async with AsyncRouter.from_config(two(fault)) as router:
            for _ in range(2):
                await router.chat.completions.create(model="m", messages=HI, temperature=0)
            assert fault.count("a") == 2
            await router.reload(two(fault, cache={"backend": "memory"}))
            records = [
                route_of(await router.chat.completions.create(model="m", messages=HI, temperature=0)) for _ in range(2)
            ]
            assert fault.count("a") == 3 and [r.cached for r in records] == [False, True]
            await router.reload(two(fault))
            await router.chat.completions.create(model="m", messages=HI, temperature=0)
            assert fault.count("a") == 4


async def test_a_reload_honours_a_changed_state_section(redis_server: RedisServer) -> None:
    """`reload()` to `state: redis`: this router's circuit openings now reach the other processes."""
    shared = {"backend": "redis", "url": redis_server.url, "refresh_s": 0.05}
    circuit = {"failures": 2, "cooldown_s": 30}
    with FaultServer(a=status(503), b=ok("from b")) as fault:
        async with (
            AsyncRouter.from_config(two(fault, circuit=circuit)) as first,
            AsyncRouter.from_config(two(fault, circuit=circuit, state=shared)) as second,
        ):
            await first.reload(two(fault, circuit=circuit, state=shared))
            await anyio.sleep(0.1)
            for _ in range(2):
                await first.chat.completions.create(model="m", messages=HI)  # a's circuit opens in `first`
            assert fault.count("a") == 2
            await anyio.sleep(0.4)  # several refreshes
            reply = await second.chat.completions.create(model="m", messages=HI)
    assert fault.count("a") == 2, "the other router still sent to a: the reloaded state section was ignored"
    assert any("opened by another process" in e.reason for e in route_of(reply).excluded)


async def test_a_rule_that_sets_no_hedge_keeps_the_aliass_hedging() -> None:
    """A rule changes only what its `set` names: the alias's hedge stays for the calls it matches."""
    rules = [{"name": "cheap", "match": {"tags": ["cheap"]}, "set": {"policy": "ordered"}}]
    with FaultServer(a=ok("from a", ttft=0.6), b=ok("from b")) as fault:
        cfg = two(fault, rules)
        cfg["models"]["m"]["hedge"] = {"after_s": 0.05, "max_extra_fraction": 1}
        async with AsyncRouter.from_config(cfg) as router:
            reply = await router.chat.completions.create(model="m", messages=HI, route={"tags": ["cheap"]})
    assert route_of(reply).rule == "cheap" and route_of(reply).hedged and route_of(reply).backend == "b"
