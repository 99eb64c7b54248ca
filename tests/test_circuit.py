"""Circuit breaking: open on failures, skip while open, one probe when cooled down, health report."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import respx

from providers import FailureKind
from router import AsyncRouter, route_of
from router.cli import main
from router.config import CircuitConfig, ConfigError, load_config
from router.path.circuit import Admission, Circuits, CircuitState
from router.path.record import RouteRecord
from tests.fault_server import FaultServer, down_for, ok, silent, status

BAD = FailureKind.SERVER_ERROR


def test_opens_after_consecutive_failures_and_skips_while_open() -> None:
    circuits = Circuits(CircuitConfig(failures=3, cooldown_s=10, max_cooldown_s=30, jitter=0))
    for t in range(3):
        assert circuits.admit("a", t)
        circuits.record("a", t, failure=BAD, message="boom")
    assert circuits.view("a", 3).state is CircuitState.OPEN
    assert not circuits.admit("a", 5) and "circuit open for 7.0s" in (circuits.blocked("a", 5) or "")
    assert circuits.view("a", 5).recent_errors == ("boom", "boom", "boom")


def test_half_open_lets_one_probe_through_then_closes_or_reopens_longer() -> None:
    circuits = Circuits(CircuitConfig(failures=1, cooldown_s=10, max_cooldown_s=30, jitter=0))
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 10) is Admission.PROBE  # cooled down: one probe
    assert not circuits.admit("a", 10.1) and "probe" in (circuits.blocked("a", 10.1) or "")
    circuits.record("a", 11, failure=BAD, probe=True)  # the probe failed: the cooldown doubles
    assert circuits.view("a", 11).cooldown_remaining_s == 20
    assert not circuits.admit("a", 30) and circuits.admit("a", 31) is Admission.PROBE
    circuits.record("a", 31.5, failure=BAD, probe=True)
    assert circuits.view("a", 31.5).cooldown_remaining_s == 30  # capped at max_cooldown_s
    assert circuits.admit("a", 62) is Admission.PROBE
    circuits.record("a", 62, failure=None, probe=True)  # the probe succeeded: closed, cooldown back to base
    assert circuits.view("a", 62).state is CircuitState.CLOSED and circuits.admit("a", 62) is Admission.ADMITTED
    circuits.record("a", 63, failure=BAD)
    assert circuits.view("a", 63).cooldown_remaining_s == 10


def test_default_schedule_probes_every_few_seconds_with_jitter_that_only_shortens() -> None:
    """Defaults: 1 s, then doubling per failed probe up to 5 s; each cooldown 80–100 % of that."""
    plain = Circuits(CircuitConfig(jitter=0))
    jittered = Circuits(CircuitConfig(), rng=random.Random(3))
    for circuits in (plain, jittered):
        for t in range(5):
            circuits.record("a", t, failure=BAD)
    now, lengths = 4.0, []
    for circuits, seen in ((plain, lengths), (jittered, jittered_lengths := [])):
        now = 4.0
        for _ in range(6):
            seen.append(circuits.view("a", now).cooldown_remaining_s)
            now += seen[-1]
            assert circuits.admit("a", now) is Admission.PROBE
            circuits.record("a", now, failure=BAD, probe=True)
    assert lengths == [1, 2, 4, 5, 5, 5]
    assert all(0.8 * want <= got <= want for got, want in zip(jittered_lengths, lengths, strict=True))
    assert len(set(jittered_lengths)) == len(jittered_lengths)  # not in step with anyone else


@pytest.mark.parametrize("phase", [i / 4 for i in range(16)])
def test_with_the_defaults_a_minute_of_outage_and_a_call_every_4s_returns_within_10s(phase: float) -> None:
    """The issue's scenario, on the circuit alone: a 60 s outage, one call every 4 s (each call tries the
    primary when admitted, twice while its circuit is closed): the primary serves again within 10 s."""
    circuits, outage = Circuits(CircuitConfig(), rng=random.Random(int(phase * 4))), 60.0
    back = None
    for k in range(40):
        now = phase + 4 * k
        admission = circuits.admit("a", now)
        tries = 2 if admission is Admission.ADMITTED else 1 if admission else 0
        for _ in range(tries):
            healthy = now >= outage
            circuits.record("a", now, failure=None if healthy else BAD, probe=admission is Admission.PROBE)
            if healthy or circuits.view("a", now).state is not CircuitState.CLOSED:
                break
        if now >= outage and tries:
            back = now - outage
            break
    assert back is not None and back <= 10


def test_only_the_probe_decides_a_half_open_circuit() -> None:
    """A request sent before the circuit opened that ends while it is half-open neither frees the
    probe slot (a second probe would be let in) nor re-opens or closes the circuit."""
    circuits = Circuits(CircuitConfig(failures=1, cooldown_s=1, jitter=0))
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 1) is Admission.PROBE
    circuits.record("a", 1.1, failure=BAD)  # late failure of an older request
    circuits.record("a", 1.2, failure=None)  # late success of an older request
    circuits.release("a")  # an older request cancelled
    assert circuits.view("a", 1.3).state is CircuitState.HALF_OPEN and not circuits.admit("a", 1.3)
    circuits.record("a", 1.5, failure=None, probe=True)
    assert circuits.view("a", 1.5).state is CircuitState.CLOSED


def test_a_server_answering_its_load_probe_again_closes_the_circuit_on_probation() -> None:
    circuits = Circuits(CircuitConfig(failures=2, cooldown_s=4, max_cooldown_s=5, jitter=0))
    closed: list[str] = []
    circuits.on_close = closed.append
    for t in (0, 1):
        circuits.record("a", t, failure=BAD)
    assert circuits.server_answered("a", 2) and closed == ["a"]
    assert circuits.view("a", 2).state is CircuitState.CLOSED and circuits.admit("a", 2) is Admission.ADMITTED
    circuits.record("a", 3, failure=BAD)  # on probation: one failure re-opens it, as a failed probe would
    assert circuits.view("a", 3).state is CircuitState.OPEN and circuits.view("a", 3).cooldown_remaining_s == 5
    circuits.record("b", 0, failure=FailureKind.RATE_LIMITED, retry_after=30)
    assert not circuits.server_answered("b", 1)  # a provider's Retry-After is not cut short
    assert not circuits.server_answered("c", 1)  # nothing to close


def test_error_rate_over_the_window_opens_it() -> None:
    circuits = Circuits(CircuitConfig(failures=100, error_rate=0.5, window_s=10, min_requests=6))
    for t, fine in enumerate([True, False, True, False, True, False]):
        circuits.record("a", t, failure=None if fine else BAD)
    assert circuits.view("a", 6).state is CircuitState.OPEN
    assert "50% of 6 recent requests failed" in circuits.view("a", 6).opened_by


def test_the_recent_error_rate_follows_the_window_as_it_slides() -> None:
    """The window's failures are counted as they come and go (O(1) per call at any call rate): the
    rate is over the last `window_s` only."""
    circuits = Circuits(CircuitConfig(failures=10_000, error_rate=0.9, window_s=10, min_requests=10_000))
    for i in range(20_000):  # 2,000 calls a second for 10 s, every tenth failing
        circuits.record("a", i / 2000, failure=BAD if i % 10 == 0 else None)
    assert circuits.view("a", 10.0).recent_error_rate == pytest.approx(0.1, abs=0.001)
    for i in range(1000):  # then half a second of failures only
        circuits.record("a", 10.0 + i / 2000, failure=BAD)
    assert circuits.view("a", 10.5).recent_error_rate == pytest.approx((1900 + 1000) / 20_000, abs=0.002)
    assert circuits.view("a", 20.4).recent_error_rate == 1.0  # only the failures are still in the window
    assert circuits.view("a", 21.0).recent_error_rate == 0.0


def test_rate_limit_opens_until_its_reset_and_the_later_deadline_wins() -> None:
    circuits = Circuits(CircuitConfig(cooldown_s=5))
    circuits.record("a", 0, failure=FailureKind.RATE_LIMITED, retry_after=60)
    circuits.record("a", 1, failure=FailureKind.RATE_LIMITED, retry_after=2)  # an earlier reset doesn't shorten it
    assert circuits.view("a", 2).cooldown_remaining_s == 58
    # the provider said when to come back: then every caller may, no probe needed
    assert circuits.admit("a", 60) is Admission.ADMITTED and circuits.admit("a", 60) is Admission.ADMITTED
    assert circuits.view("a", 60).state is CircuitState.CLOSED


def test_client_errors_do_not_count_and_cancelled_probes_are_released() -> None:
    circuits = Circuits(CircuitConfig(failures=1))
    for kind in (FailureKind.BAD_REQUEST, FailureKind.CONTEXT_TOO_LONG, FailureKind.CONTENT_FILTERED):
        circuits.record("a", 0, failure=kind)
    assert circuits.view("a", 0).state is CircuitState.CLOSED
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 100) is Admission.PROBE
    circuits.release("a", probe=True)  # cancelled: no verdict, the next caller may probe
    assert circuits.admit("a", 100) is Admission.PROBE


A = "http://a.test/v1/chat/completions"
B = "http://b.test/v1/chat/completions"
OK = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}
CONFIG: dict[str, Any] = {
    "backends": {
        "a": {"provider": "openai", "base_url": "http://a.test/v1"},
        "b": {"provider": "openai", "base_url": "http://b.test/v1"},
    },
    "models": {
        "primary": {"deployments": [{"backend": "a", "model": "m"}], "fallbacks": ["backup"]},
        "backup": {"deployments": [{"backend": "b", "model": "m"}]},
    },
    "retry": {"attempts_per_deployment": 1},
    "circuit": {"failures": 3, "cooldown_s": 0.3},
}
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.anyio
async def test_a_dead_primary_is_skipped_then_used_again_within_one_cooldown(httpx2_mock: respx.Router) -> None:
    healthy = {"now": False}
    primary = httpx2_mock.post(A).mock(
        side_effect=lambda request: httpx.Response(200, json=OK) if healthy["now"] else httpx.Response(500, json={})
    )
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=OK))
    async with AsyncRouter.from_config(CONFIG) as router:
        served = [route_of(await router.chat.completions.create(model="primary", messages=HI)) for _ in range(6)]
        assert primary.call_count == 3, "after 3 failures the open circuit keeps requests off the primary"
        assert [r.backend for r in served] == ["b"] * 6
        assert [a.outcome for a in served[-1].attempts] == ["ok"]  # no waiting on the dead primary
        assert "circuit open" in served[-1].excluded[0].reason
        health = {h.deployment: h for h in await router.health()}
        assert health["a/m"].state == "open" and health["a/m"].consecutive_failures == 3
        assert 0 < health["a/m"].cooldown_remaining_s <= 0.3 and health["b/m"].state == "closed"
        healthy["now"] = True
        await anyio.sleep(0.35)
        back = route_of(await router.chat.completions.create(model="primary", messages=HI))
        assert back.backend == "a" and (await router.health())[0].state == "closed"


@pytest.mark.anyio
async def test_with_every_circuit_open_each_deployment_is_tried_once_anyway(httpx2_mock: respx.Router) -> None:
    """Panic mode: rejecting every call would lose them all, so each deployment gets one try, no retries."""
    primary = httpx2_mock.post(A).mock(return_value=httpx.Response(503, json={"error": {"message": "down"}}))
    backup = httpx2_mock.post(B).mock(return_value=httpx.Response(503, json={"error": {"message": "down"}}))
    cfg = {
        **CONFIG,
        "retry": {"attempts_per_deployment": 3, "backoff_initial_s": 0.001},
        "circuit": {"failures": 1, "cooldown_s": 30},
    }
    async with AsyncRouter.from_config(cfg) as router:
        with pytest.raises(openai.InternalServerError):
            await router.chat.completions.create(model="primary", messages=HI)
        assert (primary.call_count, backup.call_count) == (1, 1)  # a 503 opens each circuit (failures: 1)
        with pytest.raises(openai.InternalServerError) as caught:
            await router.chat.completions.create(model="primary", messages=HI)
        assert (primary.call_count, backup.call_count) == (2, 2)
        backup.mock(return_value=httpx.Response(200, json=OK))
        reply = await router.chat.completions.create(model="primary", messages=HI)
    assert [a.outcome for a in caught.value.attempts] == ["overloaded", "overloaded"]  # type: ignore[attr-defined]
    assert route_of(reply).backend == "b"


def test_cli_health_probes_self_hosted_load(llama_pair: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(
        json.dumps(
            {
                "backends": {
                    "local": {"provider": "llamacpp", "base_url": llama_pair[0].base_url},
                    "gone": {"provider": "vllm", "base_url": "http://127.0.0.1:9/v1"},
                },
                "models": {
                    "tiny": {
                        "deployments": [{"backend": "local", "model": "tiny-llama"}, {"backend": "gone", "model": "x"}]
                    }
                },
                "load_probes": {"timeout_s": 0.5},
            }
        )
    )
    assert main(["health", str(path), "--json"]) == 0
    rows = {row["deployment"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["local/tiny-llama"]["server_slots"] == 4 and rows["local/tiny-llama"]["probe_ok"] is True
    assert rows["gone/x"]["probe_ok"] is False and rows["gone/x"]["state"] == "closed"
    assert main(["health", str(path)]) == 0
    table = capsys.readouterr().out
    assert "not answering" in table and "0/4 running" in table


# --- back on the primary after an outage, against real loopback servers ----------------------

FAST_TIMEOUTS = {"connect_s": 1.0, "first_token_s": 0.3, "stall_s": 1.0, "total_s": 10.0, "adaptive_first_token": False}


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    """Backends a (the primary) and b (its fallback), answering until a test scripts them."""
    with FaultServer(max_hold_s=5.0, a=ok("from a"), b=ok("from b")) as server:
        yield server
        assert server.errors == []


def fault_config(server: FaultServer, circuit: dict[str, Any], **retry: Any) -> dict[str, Any]:
    """Alias `primary` = a/m, falling back to `backup` = b/m; quick retries, short first-token deadline."""
    return {
        "backends": {n: {"provider": "openai", "base_url": server.base_url(n)} for n in server.names},
        "models": {
            "primary": {"deployments": [{"backend": "a", "model": "m"}], "fallbacks": ["backup"]},
            "backup": {"deployments": [{"backend": "b", "model": "m"}]},
        },
        "timeouts": FAST_TIMEOUTS,
        "retry": {"attempts_per_deployment": 3, "backoff_initial_s": 0.01, "max_retry_after_s": 1.0, **retry},
        "circuit": circuit,
    }


def sent(route: RouteRecord) -> list[tuple[str, str]]:
    """The attempts that went out: (backend, outcome)."""
    return [(a.backend, a.outcome) for a in route.attempts if a.sent]


@pytest.mark.anyio
async def test_a_recovered_primary_serves_again_within_the_cooldown_cap_of_its_recovery(fault: FaultServer) -> None:
    """The issue's scenario, ten times faster: the primary 503s for 1.5 s, then is healthy; a call every
    0.2 s. Back on it within `max_cooldown_s` + one call gap; meanwhile no call paid more than one
    failed attempt at it once its circuit had opened."""
    outage, every, cap = 1.5, 0.2, 0.3
    cfg = fault_config(fault, {"failures": 2, "cooldown_s": 0.05, "max_cooldown_s": cap})
    calls: list[tuple[float, RouteRecord]] = []
    async with AsyncRouter.from_config(cfg) as router:
        fault.script("a", down_for(outage, status(503), ok("from a")))
        while (due := 0.05 + len(calls) * every) < outage + 1.0:
            await anyio.sleep(max(0.0, due - fault.now("a")))
            begun = fault.now("a")
            calls.append((begun, route_of(await router.chat.completions.create(model="primary", messages=HI))))
    during = [route for begun, route in calls if begun < outage - 0.05]
    assert all(route.backend == "b" for route in during)
    assert sent(during[0]) == [("a", "overloaded")] * 2 + [("b", "ok")]  # 2 failures in a row: open
    for route in during[1:]:  # then skipped, or one probe and straight on to the fallback
        assert sent(route) in ([("b", "ok")], [("a", "overloaded"), ("b", "ok")])
    back = next(begun - outage for begun, route in calls if begun >= outage and route.backend == "a")
    assert back <= cap + every + 0.2
    assert all(route.backend == "a" for begun, route in calls if begun >= outage + back)


@pytest.mark.anyio
async def test_one_probe_at_a_time_and_its_caller_waits_on_one_failed_attempt_only(fault: FaultServer) -> None:
    """Eight calls arrive together once the cooldown is over: one probes the (silent) primary, times out
    once and gets the fallback; the seven others go straight to the fallback, sending nothing to a."""
    async with AsyncRouter.from_config(fault_config(fault, {"failures": 1, "cooldown_s": 0.2, "jitter": 0})) as router:
        fault.script("a", [status(503), silent()])
        assert route_of(await router.chat.completions.create(model="primary", messages=HI)).backend == "b"
        await anyio.sleep(0.25)
        routes: list[RouteRecord] = []

        async def one() -> None:
            routes.append(route_of(await router.chat.completions.create(model="primary", messages=HI)))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
        wall = anyio.current_time() - started
    assert fault.count("a") == 2  # the opener and one probe
    shapes = sorted(sent(route) for route in routes)
    assert shapes == [[("a", "timeout"), ("b", "ok")]] + [[("b", "ok")]] * 7
    assert wall < FAST_TIMEOUTS["first_token_s"] + 0.5  # the probe's caller waited on one deadline, not two


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("probe_fails_with", "outcome"),
    [(status(503), "overloaded"), (status(429, retry_after_ms=50), "rate_limited")],
    ids=["503", "429-short-retry-after"],
)
async def test_a_failed_probe_is_not_retried_on_the_same_deployment(
    fault: FaultServer, probe_fails_with: Any, outcome: str
) -> None:
    """Even a failure that is retryable elsewhere (a 503, a 429 with a short Retry-After): a probe is one
    attempt, and its caller moves on to the fallback."""
    async with AsyncRouter.from_config(fault_config(fault, {"failures": 1, "cooldown_s": 0.1, "jitter": 0})) as router:
        fault.script("a", [status(503), probe_fails_with, ok("from a")])
        await router.chat.completions.create(model="primary", messages=HI)  # opens a's circuit
        await anyio.sleep(0.15)
        probed = route_of(await router.chat.completions.create(model="primary", messages=HI))
    assert sent(probed) == [("a", outcome), ("b", "ok")] and fault.count("a") == 2


VLLM_METRICS = "vllm:num_requests_running 0.0\nvllm:num_requests_waiting 0.0\n"


@pytest.mark.anyio
async def test_a_self_hosted_server_answering_load_probes_again_closes_its_circuit(
    httpx2_mock: respx.Router,
) -> None:
    """A poll that succeeds after failed ones ends the cooldown, so no caller pays for a probe; polls that
    succeed all along (the server up, its completions failing) don't."""
    server = {"up": True, "chat": 503}
    httpx2_mock.get("http://gpu.test/metrics").mock(
        side_effect=lambda request: (
            httpx.Response(200, text=VLLM_METRICS) if server["up"] else httpx.ConnectError("connection refused")
        )
    )
    httpx2_mock.post("http://gpu.test/v1/chat/completions").mock(
        side_effect=lambda request: httpx.Response(server["chat"], json=OK if server["chat"] == 200 else {})
    )
    httpx2_mock.post(B).mock(return_value=httpx.Response(200, json=OK))
    cfg = {
        "backends": {"gpu": {"provider": "vllm", "base_url": "http://gpu.test/v1"}, "b": CONFIG["backends"]["b"]},
        "models": {
            "primary": {"deployments": [{"backend": "gpu", "model": "m"}], "fallbacks": ["backup"]},
            "backup": CONFIG["models"]["backup"],
        },
        "retry": {"attempts_per_deployment": 1},
        "circuit": {"failures": 1, "cooldown_s": 60, "jitter": 0},  # only the poller can end it in time
        "load_probes": {"interval_s": 0.03, "timeout_s": 0.1},
    }
    async with AsyncRouter.from_config(cfg) as router:
        assert route_of(await router.chat.completions.create(model="primary", messages=HI)).backend == "b"
        await anyio.sleep(0.2)  # polls answered all along: no evidence
        assert (await router.health())[0].state == "open"
        server["up"] = False
        await anyio.sleep(0.15)
        server["up"], server["chat"] = True, 200  # the server restarts, healthy
        await anyio.sleep(0.2)
        health = (await router.health())[0]
        back = route_of(await router.chat.completions.create(model="primary", messages=HI))
    assert health.state == "closed"
    assert sent(back) == [("gpu", "ok")]


SETTINGS_YAML = """\
backends:
  a: {provider: openai, base_url: "http://a.test/v1", circuit: {failures: 1, cooldown_s: 7}}
  b: {provider: openai, base_url: "http://b.test/v1"}
models:
  primary:
    deployments: [{backend: a, model: m}]
    fallbacks: [backup]
    circuit: {cooldown_s: 2}
  backup:
    deployments: [{backend: b, model: m}]
circuit: {failures: 3, jitter: 0}
retry: {attempts_per_deployment: 1}
"""


@pytest.mark.anyio
async def test_circuit_settings_per_backend_and_alias_override_the_top_level_field_by_field(
    httpx2_mock: respx.Router, tmp_path: Any
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(SETTINGS_YAML)
    httpx2_mock.post(A).mock(return_value=httpx.Response(503, json={}))
    httpx2_mock.post(B).mock(return_value=httpx.Response(503, json={}))
    async with AsyncRouter.from_config(path) as router:
        with pytest.raises(openai.InternalServerError):
            await router.chat.completions.create(model="primary", messages=HI)
        health = {h.deployment: h for h in await router.health()}
    # a: `failures: 1` from its backend, `cooldown_s: 2` from its alias; b: the top level's `failures: 3`
    assert health["a/m"].state == "open" and health["a/m"].cooldown_remaining_s == pytest.approx(2, abs=0.2)
    assert health["b/m"].state == "closed" and health["b/m"].consecutive_failures == 1


def test_bad_circuit_settings_are_reported_with_file_and_line(tmp_path: Any) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        SETTINGS_YAML.replace("{failures: 1, cooldown_s: 7}", "{failures: 0, cooldown_s: 7, probes: 2}")
        .replace("circuit: {cooldown_s: 2}", "circuit: {cooldown_s: 2, max_cooldown_s: 1}")
        .replace("circuit: {failures: 3, jitter: 0}", "circuit: {failures: 3, jitter: 1}")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(issue).replace(str(path), "router.yaml") for issue in caught.value.issues] == [
        "router.yaml:2: backends.a.circuit.failures: Input should be greater than or equal to 1",
        "router.yaml:2: backends.a.circuit.probes: unknown field",
        "router.yaml:8: models.primary.circuit: max_cooldown_s (1) is below cooldown_s (2)",
        "router.yaml:11: circuit.jitter: Input should be less than 1",
    ]
