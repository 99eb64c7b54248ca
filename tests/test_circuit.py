"""Circuit breaking: open on failures, skip while open, one probe when cooled down, health report."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import openai
import pytest
import respx

from providers import FailureKind
from router import AsyncRouter, route_of
from router.cli import main
from router.config import CircuitConfig
from router.path.circuit import Circuits, CircuitState

BAD = FailureKind.SERVER_ERROR


def test_opens_after_consecutive_failures_and_skips_while_open() -> None:
    circuits = Circuits(CircuitConfig(failures=3, cooldown_s=10))
    for t in range(3):
        assert circuits.admit("a", t)
        circuits.record("a", t, failure=BAD, message="boom")
    assert circuits.view("a", 3).state is CircuitState.OPEN
    assert not circuits.admit("a", 5) and "circuit open for 7.0s" in (circuits.blocked("a", 5) or "")
    assert circuits.view("a", 5).recent_errors == ("boom", "boom", "boom")


def test_half_open_lets_one_probe_through_then_closes_or_reopens_longer() -> None:
    circuits = Circuits(CircuitConfig(failures=1, cooldown_s=10, max_cooldown_s=30))
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 10)  # cooled down: one probe
    assert not circuits.admit("a", 10.1) and "probe" in (circuits.blocked("a", 10.1) or "")
    circuits.record("a", 11, failure=BAD)  # the probe failed: the cooldown doubles
    assert circuits.view("a", 11).cooldown_remaining_s == 20
    assert not circuits.admit("a", 30) and circuits.admit("a", 31)
    circuits.record("a", 31.5, failure=BAD)
    assert circuits.view("a", 31.5).cooldown_remaining_s == 30  # capped at max_cooldown_s
    assert circuits.admit("a", 62)
    circuits.record("a", 62, failure=None)  # the probe succeeded: closed, cooldown back to base
    assert circuits.view("a", 62).state is CircuitState.CLOSED and circuits.admit("a", 62)
    circuits.record("a", 63, failure=BAD)
    assert circuits.view("a", 63).cooldown_remaining_s == 10


def test_error_rate_over_the_window_opens_it() -> None:
    circuits = Circuits(CircuitConfig(failures=100, error_rate=0.5, window_s=10, min_requests=6))
    for t, ok in enumerate([True, False, True, False, True, False]):
        circuits.record("a", t, failure=None if ok else BAD)
    assert circuits.view("a", 6).state is CircuitState.OPEN
    assert "50% of 6 recent requests failed" in circuits.view("a", 6).opened_by


def test_rate_limit_opens_until_its_reset_and_the_later_deadline_wins() -> None:
    circuits = Circuits(CircuitConfig(cooldown_s=5))
    circuits.record("a", 0, failure=FailureKind.RATE_LIMITED, retry_after=60)
    circuits.record("a", 1, failure=FailureKind.RATE_LIMITED, retry_after=2)  # an earlier reset doesn't shorten it
    assert circuits.view("a", 2).cooldown_remaining_s == 58


def test_client_errors_do_not_count_and_cancelled_probes_are_released() -> None:
    circuits = Circuits(CircuitConfig(failures=1))
    for kind in (FailureKind.BAD_REQUEST, FailureKind.CONTEXT_TOO_LONG, FailureKind.CONTENT_FILTERED):
        circuits.record("a", 0, failure=kind)
    assert circuits.view("a", 0).state is CircuitState.CLOSED
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 100)
    circuits.release("a")  # cancelled: no verdict, the next caller may probe
    assert circuits.admit("a", 100)


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
