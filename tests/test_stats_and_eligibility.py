"""Live stats (peak-EWMA, headroom, server load) and eligibility (capabilities, context, caps)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import respx

from policies import Candidate, NoStats, Price
from providers import parse_rate_limits
from providers.load import ServerLoad
from router.config import load_config
from router.config.eligibility import Limits, Serves, exclusion_reason, request_facts
from router.config.routes import RouteTable
from router.path.hints import RouteHints
from router.path.stats import DECAY_S, MemoryStats, PeakEwma

HI = {"messages": [{"role": "user", "content": "x" * 400}]}


def test_peak_ewma_jumps_up_at_once_and_decays_slowly() -> None:
    estimate = PeakEwma(0.5, 0.0)
    estimate.observe(2.0, 1.0)
    assert estimate.read(1.0) == 2.0  # a slow sample wins at once
    estimate.observe(0.5, 1.0 + DECAY_S)  # a fast one blends in with weight 1 - e^-1
    assert 0.5 < estimate.read(1.0 + DECAY_S) < 1.2
    # unused, it fades toward the fastest it was seen to answer (0.5 s), never below: an idle slow
    # deployment does not come to look faster than a busy fast one
    assert estimate.read(1.0 + 10 * DECAY_S) == pytest.approx(0.5, abs=1e-3)
    assert estimate.read(1.0 + 100 * DECAY_S) >= 0.5


def test_stats_track_in_flight_caps_and_timings() -> None:
    stats = MemoryStats()
    assert stats.try_begin("a/m", 0.0, cap=2) and stats.try_begin("a/m", 0.0, cap=2)
    assert not stats.try_begin("a/m", 0.0, cap=2)  # the cap is never exceeded
    assert stats.view(0.0).get("a/m").in_flight == 2  # type: ignore[union-attr]
    stats.end("a/m", 1.0, ok=True, seconds=1.0, stream=True, ttft_s=0.4, tokens_per_s=100.0, cached_share=0.5)
    stats.end("a/m", 2.0, ok=False, seconds=0.1, stream=True)
    seen = stats.view(2.0).get("a/m")
    assert seen is not None
    assert seen.in_flight == 0 and seen.requests == 2 and seen.failures == 1
    assert seen.ttft_s is not None and 0.3 < seen.ttft_s <= 0.4
    assert seen.tokens_per_s == 100.0 and seen.cached_share == 0.5
    assert 0.0 < seen.error_rate < 1.0


def test_exhausted_headroom_is_remembered_until_reset() -> None:
    stats = MemoryStats()
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2m0s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "1s",
    }
    stats.observe_rate_limits("g/m", parse_rate_limits(headers), 100.0)
    assert stats.view(150.0).get("g/m").limited_until == pytest.approx(220.0)  # type: ignore[union-attr]
    assert stats.view(221.0).get("g/m").limited_until is None  # type: ignore[union-attr]
    stats.observe_retry_after("c/m", 5.0, 10.0)
    assert stats.view(12.0).get("c/m").limited_until == 15.0  # type: ignore[union-attr]


def test_server_load_is_shared_by_the_backends_deployments() -> None:
    stats = MemoryStats()
    stats.observe_server_load("box", ServerLoad(running=3, waiting=2, slots=4, kv_cache_usage=None))
    seen = stats.view(0.0).get("box/any-model")
    assert seen is not None and (seen.server_running, seen.server_waiting, seen.server_slots) == (3, 2, 4)
    stats.observe_server_load("box", None)
    assert stats.view(0.0).get("box/any-model").probe_ok is False  # type: ignore[union-attr]


def test_request_facts() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    facts = request_facts({**HI, "tools": tools, "max_completion_tokens": 50}, stream=True)
    assert facts.uses_tools and facts.stream and facts.max_output_tokens == 50
    assert 100 <= facts.prompt_tokens <= 140
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert request_facts({**HI, "response_format": schema}, stream=False).uses_json_schema
    assert request_facts(HI, stream=False).profile().output_tokens == 256  # the default expectation


CANDIDATE = Candidate("a/m", "a", "groq", "m", 0, price=Price(0.15, 0.60, 0.075))


@pytest.mark.parametrize(
    ("serves", "body", "stream", "limits", "reason"),
    [
        (Serves(tools=False), {**HI, "tools": [{"type": "function"}]}, False, Limits(), "does not support tools"),
        (Serves(stream=False), HI, True, Limits(), "does not support stream"),
        (Serves(), HI, False, Limits(require=("json_schema",)), None),
        (Serves(json_schema=False), HI, False, Limits(require=("json_schema",)), "does not support json_schema"),
        (Serves(context_window=150), {**HI, "max_tokens": 100}, False, Limits(), "context window 150 tokens"),
        (Serves(context_window=300), {**HI, "max_tokens": 100}, False, Limits(), None),
        (Serves(), HI, False, Limits(max_output_per_mtok=0.5), "output $0.6/M > cap $0.5/M"),
        (Serves(), HI, False, Limits(max_input_per_mtok=0.2, max_output_per_mtok=0.6), None),
        (Serves(), HI, False, Limits(max_cost_usd=1e-9), "expected cost"),
        (Serves(), HI, False, Limits(max_ttft_s=0.01), "expected TTFT"),
        (Serves(), HI, False, Limits(only=("b", "cerebras")), "not in the `only` list (hint or rule)"),
        (Serves(), HI, False, Limits(only=("groq",)), None),
        (Serves(), HI, False, Limits(exclude=("a/m",)), "excluded"),
    ],
)
def test_exclusion_reasons(serves: Serves, body: dict, stream: bool, limits: Limits, reason: str | None) -> None:
    found = exclusion_reason(CANDIDATE, serves, request_facts(body, stream=stream), limits, NoStats())
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_unknown_price_cannot_meet_a_cap() -> None:
    unpriced = Candidate("box/m", "box", "vllm", "m", 0)
    reason = exclusion_reason(unpriced, Serves(), request_facts(HI, stream=False), Limits(max_cost_usd=1.0), NoStats())
    assert reason is not None and "price unknown" in reason


def test_deepseek_price_follows_its_peak_hours() -> None:
    table = RouteTable(
        load_config(
            {
                "backends": {"ds": {"provider": "deepseek", "api_key": "k"}},
                "models": {"flash": {"deployments": [{"backend": "ds", "model": "deepseek-flash"}]}},
            }
        )
    )
    deployment = table.routes["flash"].deployments[0]
    peak = deployment.candidate_at(datetime(2026, 11, 30, 7, 30, tzinfo=UTC)).price  # Monday 15:30 Beijing
    assert peak == Price(0.30, 1.20, 0.006)
    night = deployment.candidate_at(datetime(2026, 11, 30, 12, 0, tzinfo=UTC)).price
    weekend = deployment.candidate_at(datetime(2026, 11, 29, 7, 30, tzinfo=UTC)).price
    assert night == weekend == Price(0.15, 0.60, 0.003)


def test_config_price_overrides_the_list_and_self_hosted_per_hour() -> None:
    table = RouteTable(
        load_config(
            {
                "backends": {"g": {"provider": "groq", "api_key": "k"}, "box": {"provider": "vllm"}},
                "models": {
                    "m": {
                        "deployments": [
                            {
                                "backend": "g",
                                "model": "openai/gpt-oss-120b",
                                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
                            },
                            {
                                "backend": "box",
                                "model": "oss",
                                "price": {"per_hour": 2.0},
                                "context_window": 8192,
                                "max_concurrency": 8,
                                "capabilities": {"tools": False},
                                "priors": {"ttft_s": 0.2},
                            },
                        ]
                    }
                },
            }
        )
    )
    listed, box = table.routes["m"].deployments
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert listed.candidate_at(now).price == Price(0.1, 0.2)
    assert box.candidate_at(now).price == Price(0.0, 0.0, None, 2.0)
    assert (box.serves.context_window, box.serves.tools, box.candidate.max_concurrency) == (8192, False, 8)
    assert box.candidate.prior_ttft_s == 0.2
    # a hosted model's context window comes from the provider's catalogue
    assert (
        RouteTable(
            load_config(
                {
                    "backends": {"g": {"provider": "groq", "api_key": "k"}},
                    "models": {"m": {"deployments": [{"backend": "g", "model": "openai/gpt-oss-120b"}]}},
                }
            )
        )
        .routes["m"]
        .deployments[0]
        .serves.context_window
        == 131_072
    )


def test_unknown_hint_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown routing hint 'polcy'; known: policy, deadline_s"):
        RouteHints.coerce({"polcy": "cheapest"})


def test_a_load_report_stops_counting_our_requests_once_they_end() -> None:
    """A server's `running` includes our requests in flight when it was read; once they end, only the
    other clients' share of the report still counts (else a report one poll old keeps a deployment
    looking busy that we have just left idle)."""
    from providers.load import ServerLoad

    stats = MemoryStats()
    for _ in range(3):
        stats.try_begin("gpu/m", 0.0)
    stats.observe_server_load("gpu", ServerLoad(running=5, waiting=1, slots=8, kv_cache_usage=None))
    assert stats.view(0.0).get("gpu/m").server_running == 5  # type: ignore[union-attr]
    for _ in range(3):
        stats.end("gpu/m", 1.0, ok=True, seconds=1.0)
    seen = stats.view(1.0).get("gpu/m")
    assert seen is not None and seen.in_flight == 0 and seen.server_running == 2  # the other clients' two
    stats.try_begin("gpu/m", 2.0)
    assert stats.view(2.0).get("gpu/m").server_running == 3  # type: ignore[union-attr]


# --- garbage-collection pauses -----------------------------------------------------------------


def test_a_timing_that_was_mostly_a_gc_pause_is_left_out_of_the_estimates() -> None:
    """A collection that stops the process for 70 ms lands in every call in flight; a 2 ms backend's
    sample that is mostly pause would make it look 35x slower than it is. Its outcome still counts."""
    stats = MemoryStats()
    stats.try_begin("a/m", 0.0)
    stats.end("a/m", 0.072, ok=True, seconds=0.072, paused_s=0.070)
    seen = stats.view(0.1).get("a/m")
    assert seen is not None and seen.requests == 1 and seen.latency_s is None
    stats.try_begin("a/m", 0.1)
    stats.end("a/m", 0.102, ok=True, seconds=0.002, paused_s=0.0005)  # a young-generation pass: kept
    assert stats.view(0.2).get("a/m").latency_s == pytest.approx(0.002)  # type: ignore[union-attr]
    stats.try_begin("a/m", 0.2)  # a stream: a paused wait for the first token is left out, its decode speed kept
    stats.end(
        "a/m",
        1.0,
        ok=True,
        seconds=0.8,
        stream=True,
        ttft_s=0.08,
        tokens_per_s=100.0,
        paused_s=0.07,
        ttft_paused_s=0.07,
    )
    seen = stats.view(1.0).get("a/m")
    assert seen is not None and seen.ttft_s is None and seen.tokens_per_s == 100.0


def test_the_pause_clock_counts_a_full_collection() -> None:
    import gc

    from router.path.pauses import paused_s

    heap = [[i] for i in range(200_000)]  # something for the collector to walk
    before = paused_s()
    gc.collect()
    assert paused_s() > before
    del heap


@pytest.mark.anyio
async def test_the_request_path_hands_the_pause_during_an_attempt_to_the_stats(
    httpx2_mock: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.path.pipeline as pipeline
    from router import AsyncRouter
    from tests.openai_backends import chat_completion

    clock = [0.0]
    monkeypatch.setattr(pipeline, "paused_s", lambda: clock[0])
    pause_next = [True]

    def answer(request: httpx.Request) -> httpx.Response:
        if pause_next[0]:
            clock[0] += 10.0  # the process stood still while the answer was on its way
        return httpx.Response(200, json=chat_completion(json.loads(request.content)))

    httpx2_mock.post("http://a.test/v1/chat/completions").mock(side_effect=answer)
    config = {
        "backends": {"a": {"provider": "openai", "base_url": "http://a.test/v1", "api_key": "k"}},
        "models": {"chat": {"deployments": [{"backend": "a", "model": "m"}]}},
    }
    async with AsyncRouter(config) as router:
        await router.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert router.stats.view(0).get("a/m").latency_s is None  # type: ignore[union-attr]
        pause_next[0] = False
        await router.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert router.stats.view(0).get("a/m").latency_s is not None  # type: ignore[union-attr]
