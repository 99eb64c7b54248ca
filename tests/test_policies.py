"""Policies and the estimates they rank by, on synthetic stats: no servers, no clock."""

from __future__ import annotations

import itertools
import math
import random
import runpy
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies
from policies import Candidate, DeploymentStats, NoStats, Policy, Price, RequestProfile, get_policy
from policies.estimates import (
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_S,
    at_capacity,
    expected_completion_s,
    expected_cost_usd,
    expected_duration_s,
    expected_tokens_per_s,
    expected_ttft_s,
    load,
)
from policies.fastest import Fastest

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ["cheapest", "fastest", "least-loaded", "ordered", "weighted"]
REQ = RequestProfile(prompt_tokens=1_000, output_tokens=100)
NOW = 1_000.0


class Stats:
    """A stats view over a dict."""

    def __init__(self, by_id: dict[str, DeploymentStats] | None = None) -> None:
        self.by_id = dict(by_id or {})

    def get(self, candidate_id: str) -> DeploymentStats | None:
        return self.by_id.get(candidate_id)


def cand(name: str, order: int = 0, **kw: object) -> Candidate:
    return Candidate(id=f"{name}/m", backend=name, provider=name, model="m", order=order, **kw)  # type: ignore[arg-type]


def ids(ranked: Sequence[Candidate]) -> list[str]:
    return [c.backend for c in ranked]


def rank(name: str, cands: Sequence[Candidate], stats: Stats | None = None, *, request: RequestProfile = REQ,
         now: float = NOW, seed: int = 0, policy: Policy | None = None) -> list[str]:  # fmt: skip
    p = policy or get_policy(name)
    return ids(p.rank(cands, stats or Stats(), request=request, now=now, rng=random.Random(seed)))


# --- registry ------------------------------------------------------------------------------------


def test_registry_names_and_protocol() -> None:
    assert set(BUILT_IN) <= set(policies.known_policies())
    for name in BUILT_IN:
        p = get_policy(name)
        assert isinstance(p, Policy)
        assert p.name == name
    with pytest.raises(KeyError, match="least-loaded"):
        get_policy("nope")


def test_ordered_follows_config_order() -> None:
    assert rank("ordered", [cand("b", 1), cand("c", 2), cand("a", 0)]) == ["a", "b", "c"]


# --- estimates -----------------------------------------------------------------------------------


def test_cost_per_token_with_cached_input() -> None:
    c = cand("x", price=Price(input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5))
    r = RequestProfile(prompt_tokens=1_000_000, output_tokens=500_000, cached_prompt_tokens=400_000)
    assert expected_cost_usd(c, r) == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)
    no_cached_rate = cand("y", price=Price(2.0, 8.0))
    assert expected_cost_usd(no_cached_rate, r) == pytest.approx(1.0 * 2.0 + 0.5 * 8.0)
    too_many_cached = RequestProfile(prompt_tokens=100, output_tokens=0, cached_prompt_tokens=1_000)
    assert expected_cost_usd(c, too_many_cached) == pytest.approx(100 * 0.5e-6)
    assert expected_cost_usd(cand("free"), r) is None


def test_cost_per_hour_uses_expected_duration() -> None:
    box = cand("box", price=Price(0.0, 0.0, per_hour=3.6), prior_ttft_s=0.5, prior_tokens_per_s=20.0)
    r = RequestProfile(prompt_tokens=10, output_tokens=100)
    assert expected_cost_usd(box, r) == pytest.approx(0.001 * (0.5 + 5.0))  # priors: 5.5 s at $0.001/s
    seen = DeploymentStats(ttft_s=1.0, tokens_per_s=50.0)
    assert expected_cost_usd(box, r, seen) == pytest.approx(0.001 * 3.0)
    both = cand("both", price=Price(1.0, 0.0, per_hour=3.6))
    assert expected_cost_usd(both, r, seen) == pytest.approx(10e-6 + 0.003)


def test_time_estimates_samples_then_priors_then_defaults() -> None:
    bare = cand("bare")
    primed = cand("primed", prior_ttft_s=0.3, prior_tokens_per_s=400.0)
    assert expected_ttft_s(bare, None) == DEFAULT_TTFT_S
    assert expected_tokens_per_s(bare, None) == DEFAULT_TOKENS_PER_S
    assert expected_ttft_s(primed, None) == 0.3
    assert expected_tokens_per_s(primed, None) == 400.0
    streamed = DeploymentStats(ttft_s=0.2, tokens_per_s=1_000.0, latency_s=9.0)
    assert expected_ttft_s(primed, streamed) == 0.2
    assert expected_tokens_per_s(primed, streamed) == 1_000.0
    assert expected_duration_s(primed, streamed, REQ) == pytest.approx(0.2 + 0.1)
    assert expected_duration_s(bare, None, REQ) == pytest.approx(DEFAULT_TTFT_S + 100 / DEFAULT_TOKENS_PER_S)
    assert expected_tokens_per_s(bare, DeploymentStats(tokens_per_s=0.0)) == DEFAULT_TOKENS_PER_S


def test_time_estimates_from_non_streamed_samples_only() -> None:
    c = cand("c", prior_ttft_s=0.8)
    slow, quick = DeploymentStats(latency_s=4.0), DeploymentStats(latency_s=0.25)
    assert expected_duration_s(c, slow, REQ) == 4.0  # the whole-response latency, as it stands
    assert expected_ttft_s(c, slow) == 0.8  # the prior ...
    assert expected_ttft_s(c, quick) == 0.25  # ... capped by the whole answer's time


def test_load_and_capacity() -> None:
    capped = cand("capped", max_concurrency=4)
    assert load(capped, None) == 0.0
    assert load(capped, DeploymentStats(in_flight=2)) == 0.5
    assert load(capped, DeploymentStats(in_flight=1, server_slots=2)) == 0.5  # the smaller capacity
    assert load(cand("u"), DeploymentStats(in_flight=3)) == 3.0  # no capacity known: the count
    assert load(cand("u"), DeploymentStats(in_flight=1, server_waiting=2)) == 3.0
    # a server report counts other clients' requests; ours are in it, so not added twice
    assert load(capped, DeploymentStats(in_flight=1, server_running=3, server_waiting=1)) == 1.0
    assert load(capped, DeploymentStats(in_flight=3, server_running=1, server_waiting=0)) == 0.75
    assert load(capped, DeploymentStats(probe_ok=False)) == math.inf
    assert load(cand("zero", max_concurrency=0), None) == math.inf
    assert at_capacity(capped, DeploymentStats(in_flight=4))
    assert not at_capacity(capped, DeploymentStats(in_flight=3, server_waiting=9))
    assert not at_capacity(cand("u"), DeploymentStats(in_flight=10_000))


# --- cheapest ------------------------------------------------------------------------------------

DEEPSEEK = cand("deepseek", 0, price=Price(0.15, 0.60, cached_input_per_mtok=0.003))
GROQ = cand("groq", 1, price=Price(0.15, 0.60, cached_input_per_mtok=0.075))


def test_cheapest_cache_hit_makes_deepseek_cheaper() -> None:
    r = RequestProfile(prompt_tokens=10_000, output_tokens=500, cached_prompt_tokens=9_000)
    assert expected_cost_usd(DEEPSEEK, r) == pytest.approx(477e-6)
    assert expected_cost_usd(GROQ, r) == pytest.approx(1125e-6)
    groq_faster = Stats({"groq/m": DeploymentStats(ttft_s=0.1, tokens_per_s=800.0)})
    assert rank("cheapest", [GROQ, DEEPSEEK], groq_faster, request=r) == ["deepseek", "groq"]


def test_cheapest_tie_goes_to_the_faster_then_config_order() -> None:
    r = RequestProfile(prompt_tokens=10_000, output_tokens=500)
    assert expected_cost_usd(DEEPSEEK, r) == expected_cost_usd(GROQ, r)
    groq_faster = Stats({"groq/m": DeploymentStats(ttft_s=0.1, tokens_per_s=800.0)})
    deepseek_faster = Stats({"deepseek/m": DeploymentStats(ttft_s=0.1, tokens_per_s=800.0)})
    assert rank("cheapest", [DEEPSEEK, GROQ], groq_faster, request=r) == ["groq", "deepseek"]
    assert rank("cheapest", [GROQ, DEEPSEEK], deepseek_faster, request=r) == ["deepseek", "groq"]
    assert rank("cheapest", [GROQ, DEEPSEEK], request=r) == ["deepseek", "groq"]  # same priors: config order


def test_cheapest_tolerance_is_relative_and_tiny() -> None:
    a = cand("a", 0, price=Price(1.0, 1.0))
    b = cand("b", 1, price=Price(1.0 + 1e-15, 1.0))  # a rounding error apart: a tie
    c = cand("c", 2, price=Price(1.0 + 1e-9, 1.0))  # a real difference
    fast = Stats({k: DeploymentStats(ttft_s=0.01, tokens_per_s=1e4) for k in ("b/m", "c/m")})
    assert rank("cheapest", [a, b, c], fast) == ["b", "a", "c"]


def test_cheapest_unpriced_rank_last_fastest_first() -> None:
    priced = cand("priced", 2, price=Price(5.0, 15.0))
    slow_free, fast_free = cand("slow", 0), cand("fast", 1)
    stats = Stats({"fast/m": DeploymentStats(ttft_s=0.1, tokens_per_s=900.0)})
    assert rank("cheapest", [slow_free, fast_free, priced], stats) == ["priced", "fast", "slow"]


def test_cheapest_per_hour_box_depends_on_its_speed() -> None:
    cloud = cand("cloud", 0, price=Price(0.15, 0.60))
    box = cand("box", 1, price=Price(0.0, 0.0, per_hour=1.0))
    r = RequestProfile(prompt_tokens=2_000, output_tokens=200)  # cloud: $0.00042
    quick = Stats({"box/m": DeploymentStats(ttft_s=0.1, tokens_per_s=200.0)})  # 1.1 s: $0.00031
    slow = Stats({"box/m": DeploymentStats(ttft_s=0.5, tokens_per_s=40.0)})  # 5.5 s: $0.0015
    assert rank("cheapest", [cloud, box], quick, request=r) == ["box", "cloud"]
    assert rank("cheapest", [cloud, box], slow, request=r) == ["cloud", "box"]


# --- fastest -------------------------------------------------------------------------------------

NO_PROBE = Fastest(probe_rate=0.0)


def test_fastest_priors_until_samples() -> None:
    a = cand("a", 0, prior_ttft_s=0.2, prior_tokens_per_s=1_000.0)
    b = cand("b", 1, prior_ttft_s=0.5, prior_tokens_per_s=100.0)
    d = cand("d", 2)  # no prior, no samples: measured once, first
    assert rank("", [d, b, a], policy=NO_PROBE) == ["d", "a", "b"]
    measured = Stats({"a/m": DeploymentStats(ttft_s=2.0, tokens_per_s=100.0)})
    assert rank("", [d, b, a], measured, policy=NO_PROBE) == ["d", "b", "a"]
    # once d has a sample (here: slow) it ranks by it like the rest
    d_measured = Stats({"a/m": DeploymentStats(ttft_s=2.0, tokens_per_s=100.0), "d/m": DeploymentStats(ttft_s=9.0)})
    assert rank("", [d, b, a], d_measured, policy=NO_PROBE) == ["b", "a", "d"]
    # while its first request is in flight, it is not explored again (no herd)
    busy = Stats({"d/m": DeploymentStats(in_flight=1)})
    assert rank("", [d, b, a], busy, policy=NO_PROBE) == ["a", "b", "d"]


def test_fastest_duration_depends_on_the_request() -> None:
    snappy = cand("snappy", 0)
    steady = cand("steady", 1)
    stats = Stats({
        "snappy/m": DeploymentStats(ttft_s=0.1, tokens_per_s=50.0, last_used_at=NOW),
        "steady/m": DeploymentStats(ttft_s=1.0, tokens_per_s=1_000.0, last_used_at=NOW),
    })  # fmt: skip
    short, long = RequestProfile(100, 10), RequestProfile(100, 2_000)
    assert rank("fastest", [snappy, steady], stats, request=short) == ["snappy", "steady"]
    assert rank("fastest", [snappy, steady], stats, request=long) == ["steady", "snappy"]


def test_fastest_ties_by_config_order() -> None:
    same = DeploymentStats(ttft_s=0.3, tokens_per_s=300.0, last_used_at=NOW)
    stats = Stats({"a/m": same, "b/m": same, "c/m": same})
    assert rank("fastest", [cand("c", 2), cand("a", 0), cand("b", 1)], stats) == ["a", "b", "c"]


def test_fastest_decayed_estimate_does_not_herd() -> None:
    """An idle deployment's decayed estimate wins (a free retry); each request sent there adds its
    service time of wait (no capacity known), so concurrent callers stop following after a few."""
    steady = cand("steady", 0)
    decayed = cand("decayed", 1)
    fresh = DeploymentStats(ttft_s=0.4, tokens_per_s=400.0, last_used_at=NOW)  # 0.65 s for REQ
    idle = DeploymentStats(ttft_s=0.02, tokens_per_s=1_000.0, last_used_at=NOW - 20)  # 0.12 s
    assert rank("", [steady, decayed], Stats({"steady/m": fresh, "decayed/m": idle}), policy=NO_PROBE) == [
        "decayed",
        "steady",
    ]
    sent = ids(send_concurrently(NO_PROBE, [steady, decayed], {"steady/m": fresh, "decayed/m": idle}, 6))
    assert sent == ["decayed"] * 5 + ["steady"]  # 0.12 s x (5 + 1) > 0.65 s: the sixth caller goes elsewhere
    # non-streamed samples only: the same wait on the whole-response latency
    lat_fresh = DeploymentStats(latency_s=0.6, last_used_at=NOW)
    lat_busy = DeploymentStats(latency_s=0.05, in_flight=12, last_used_at=NOW)
    assert rank("", [decayed, steady], Stats({"steady/m": lat_fresh, "decayed/m": lat_busy}), policy=NO_PROBE) == [
        "steady",
        "decayed",
    ]


def send_concurrently(policy: Fastest, cands: Sequence[Candidate], by_id: dict[str, DeploymentStats],
                      callers: int) -> list[Candidate]:  # fmt: skip
    """Callers arriving one after another before any answers: each is sent to the first ranked."""
    stats = Stats(by_id)
    chosen = []
    for seed in range(callers):
        first = policy.rank(cands, stats, request=REQ, now=NOW, rng=random.Random(seed))[0]
        before = stats.by_id.get(first.id, DeploymentStats())
        stats.by_id[first.id] = replace(before, in_flight=before.in_flight + 1, last_used_at=NOW)
        chosen.append(first)
    return chosen


def test_fastest_counts_the_wait_behind_requests_in_flight() -> None:
    """Expected completion = duration x (1 + outstanding / capacity): one slot when none is known."""
    quick, slower = cand("quick", 0), cand("slower", 1)
    quick_busy = [DeploymentStats(ttft_s=0.05, tokens_per_s=1_000.0, last_used_at=NOW, in_flight=n) for n in range(3)]
    idle_slower = DeploymentStats(ttft_s=0.3, tokens_per_s=1_000.0, last_used_at=NOW)  # 0.4 s for REQ
    firsts = [rank("", [quick, slower], Stats({"quick/m": q, "slower/m": idle_slower}), policy=NO_PROBE)[0]
              for q in quick_busy]  # fmt: skip
    assert firsts == ["quick", "quick", "slower"]  # 0.15 s, then 0.30 s, then 0.45 s of waiting included
    assert expected_completion_s(quick, quick_busy[2], REQ) == pytest.approx(0.45)


def test_fastest_keeps_a_busy_fast_deployment_with_spare_slots_first() -> None:
    """No penalty unrelated to speed: a request in flight on a deployment with many slots costs a
    share of one slot, not a jump to the prior (the old herding guard ranked it as a 1 s one)."""
    quick = cand("quick", 0, max_concurrency=64)
    bare_quick = cand("quick", 0)  # no capacity configured, none reported yet
    slower = cand("slower", 1)
    stats = Stats({
        "quick/m": DeploymentStats(ttft_s=0.002, tokens_per_s=100_000.0, last_used_at=NOW, in_flight=31),
        "slower/m": DeploymentStats(ttft_s=0.03, tokens_per_s=100_000.0, last_used_at=NOW - 5),
    })  # fmt: skip
    assert rank("", [slower, quick], stats, policy=NO_PROBE) == ["quick", "slower"]
    sent = Counter(c.backend for c in send_concurrently(NO_PROBE, [slower, quick], dict(stats.by_id), 32))
    assert sent["quick"] >= 31  # at its 64 slots it takes (nearly) every caller
    # the same fleet without a known capacity: 31 requests in flight are a real wait (Tower's load)
    assert rank("", [slower, bare_quick], stats, policy=NO_PROBE) == ["slower", "quick"]


def test_fastest_counts_the_queue_the_server_reports() -> None:
    """A llama.cpp server with 2 slots, both busy and 4 requests waiting (other clients'): 3x the duration."""
    box, cloud = cand("box", 0), cand("cloud", 1)
    queued = DeploymentStats(ttft_s=0.05, tokens_per_s=1_000.0, last_used_at=NOW,
                             server_running=2, server_waiting=4, server_slots=2)  # fmt: skip
    cloud_stats = DeploymentStats(ttft_s=0.3, tokens_per_s=1_000.0, last_used_at=NOW)
    assert expected_completion_s(box, queued, REQ) == pytest.approx(0.15 * (1 + 6 / 2))
    assert rank("", [box, cloud], Stats({"box/m": queued, "cloud/m": cloud_stats}), policy=NO_PROBE) == ["cloud", "box"]
    idle_box = replace(queued, server_running=0, server_waiting=0)
    assert rank("", [box, cloud], Stats({"box/m": idle_box, "cloud/m": cloud_stats}), policy=NO_PROBE) == [
        "box",
        "cloud",
    ]


def probe_share(policy: Fastest, cands: Sequence[Candidate], stats: Stats, calls: int) -> Counter[str]:
    rng = random.Random(1234)
    return Counter(ids(policy.rank(cands, stats, request=REQ, now=NOW, rng=rng))[0] for _ in range(calls))


def test_fastest_probes_stale_candidates_at_about_the_rate() -> None:
    best, stale, never = cand("best", 0), cand("stale", 1), cand("never", 2)
    stats = Stats({
        "best/m": DeploymentStats(ttft_s=0.1, tokens_per_s=1_000.0, last_used_at=NOW - 1),
        "stale/m": DeploymentStats(ttft_s=0.9, tokens_per_s=100.0, last_used_at=NOW - 31),
        "never/m": DeploymentStats(ttft_s=5.0, tokens_per_s=10.0),  # has stats but no use recorded
    })  # fmt: skip
    firsts = probe_share(Fastest(), [best, stale, never], stats, 10_000)
    assert 140 <= firsts["never"] <= 260  # 2 % of 10 000 = 200, σ ≈ 14: the never-used goes first
    assert firsts["stale"] == 0  # one probe candidate at a time
    assert firsts["best"] == 10_000 - firsts["never"]
    # the never-used one busy: the next stalest is the one probed, at the rate
    busy_never = Stats({**stats.by_id, "never/m": DeploymentStats(ttft_s=5.0, tokens_per_s=10.0, in_flight=1)})
    firsts = probe_share(Fastest(probe_rate=0.25), [best, stale, never], busy_never, 2_000)
    assert 420 <= firsts["stale"] <= 580 and firsts["never"] == 0
    # a probed candidate moves to the front; the rest keep their order
    ranked = Fastest(probe_rate=1.0).rank([best, stale, never], stats, request=REQ, now=NOW, rng=random.Random(0))
    assert ids(ranked) == ["never", "best", "stale"]


def test_fastest_never_probes_fresh_busy_or_failed_candidates() -> None:
    best, slow = cand("best", 0), cand("slow", 1)
    always = Fastest(probe_rate=1.0, probe_after_s=30.0)
    for slow_stats in (
        DeploymentStats(ttft_s=3.0, last_used_at=NOW - 29),  # not stale yet
        DeploymentStats(ttft_s=3.0, last_used_at=NOW - 60, in_flight=1),  # a probe under way
        DeploymentStats(ttft_s=3.0, last_used_at=None, probe_ok=False),  # server not answering
    ):
        stats = Stats({"best/m": DeploymentStats(ttft_s=0.1, last_used_at=NOW), "slow/m": slow_stats})
        assert rank("", [slow, best], stats, policy=always) == ["best", "slow"]
    assert rank("", [slow, best], Stats({"best/m": DeploymentStats(ttft_s=0.1, last_used_at=NOW)}), policy=always) == [
        "slow",
        "best",
    ]  # no stats at all: never used, probed


def test_fastest_probes_take_at_most_the_probe_rate_of_calls() -> None:
    """However many deployments are stale, one is probed per probing call: probes stay <= 3 % of calls."""
    best = cand("best", 0)
    stale = [cand(f"stale{i}", i + 1) for i in range(8)]
    by_id = {"best/m": DeploymentStats(ttft_s=0.1, tokens_per_s=1_000.0, last_used_at=NOW)}
    by_id |= {c.id: DeploymentStats(ttft_s=0.5, tokens_per_s=100.0, last_used_at=NOW - 60) for c in stale}
    firsts = probe_share(Fastest(), [best, *stale], Stats(by_id), 10_000)
    assert 10_000 - firsts["best"] <= 300
    assert firsts["best"] >= 9_700


def test_fastest_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="probe_rate"):
        Fastest(probe_rate=1.5)
    with pytest.raises(ValueError, match="probe_after_s"):
        Fastest(probe_after_s=-1.0)


# --- least-loaded --------------------------------------------------------------------------------


def test_least_loaded_orders_by_load_and_puts_full_ones_last() -> None:
    a = cand("a", 0, max_concurrency=10)
    b = cand("b", 1, max_concurrency=10)
    full = cand("full", 2, max_concurrency=2)
    down = cand("down", 3)
    stats = Stats({
        "a/m": DeploymentStats(in_flight=8),
        "b/m": DeploymentStats(in_flight=3),
        "full/m": DeploymentStats(in_flight=2, server_slots=100),  # load 1.0 < a's? no: capacity is the smaller, 2
        "down/m": DeploymentStats(probe_ok=False),
    })  # fmt: skip
    for seed in range(20):
        assert rank("least-loaded", [a, b, full, down], stats, seed=seed) == ["b", "a", "down", "full"]


def test_least_loaded_full_goes_last_even_when_its_load_is_lowest() -> None:
    roomy = cand("roomy", 0)  # unknown capacity: load = 5
    tight = cand("tight", 1, max_concurrency=1)
    stats = Stats({"roomy/m": DeploymentStats(in_flight=5), "tight/m": DeploymentStats(in_flight=1)})
    assert load(tight, stats.get("tight/m")) < load(roomy, stats.get("roomy/m"))
    assert rank("least-loaded", [tight, roomy], stats) == ["roomy", "tight"]


def test_least_loaded_spreads_equal_loads_by_two_choices() -> None:
    cands = [cand(n, i, max_concurrency=8) for i, n in enumerate("abcd")]
    stats = Stats({c.id: DeploymentStats(in_flight=2) for c in cands})
    p, rng = get_policy("least-loaded"), random.Random(7)
    firsts = Counter(ids(p.rank(cands, stats, request=REQ, now=NOW, rng=rng))[0] for _ in range(4_000))
    assert set(firsts) == set("abcd")
    assert all(800 <= n <= 1_200 for n in firsts.values()), firsts  # 1 000 each, σ ≈ 27


def test_least_loaded_near_equal_means_ten_percent_or_one_request() -> None:
    p = get_policy("least-loaded")

    def firsts(cands: list[Candidate], stats: Stats) -> Counter[str]:
        rng = random.Random(3)
        return Counter(ids(p.rank(cands, stats, request=REQ, now=NOW, rng=rng))[0] for _ in range(600))

    # within 10 %: 1.00, 1.05, 1.08 → the lowest wins both its pairs, the middle one its third
    cands = [cand(n, i, max_concurrency=200) for i, n in enumerate("lmh")]
    stats = Stats({"l/m": DeploymentStats(in_flight=100), "m/m": DeploymentStats(in_flight=105),
                   "h/m": DeploymentStats(in_flight=108)})  # fmt: skip
    got = firsts(cands, stats)
    assert got["h"] == 0 and 340 <= got["l"] <= 460 and got["l"] + got["m"] == 600
    # one request apart (idle vs one in flight) is near-equal, two apart is not; of a pair drawn
    # the lower load still goes first, so the busier ones win only the draws that skip the idle one
    idle, one, other, two = cand("idle", 0), cand("one", 1), cand("other", 2), cand("two", 3)
    stats = Stats({"one/m": DeploymentStats(in_flight=1), "other/m": DeploymentStats(in_flight=1),
                   "two/m": DeploymentStats(in_flight=2)})  # fmt: skip
    got = firsts([two, other, one, idle], stats)
    assert got["two"] == 0 and 340 <= got["idle"] <= 460 and got["one"] > 50 and got["other"] > 50
    assert set(firsts([idle, two], stats)) == {"idle"}


def test_least_loaded_single_candidate_draws_nothing() -> None:
    rng = random.Random(5)
    before = rng.getstate()
    get_policy("least-loaded").rank([cand("a")], Stats(), request=REQ, now=NOW, rng=rng)
    assert rng.getstate() == before


# --- weighted ------------------------------------------------------------------------------------


def test_weighted_first_pick_follows_weights() -> None:
    heavy, light, off = cand("heavy", 0, weight=3.0), cand("light", 1, weight=1.0), cand("off", 2, weight=0.0)
    p, rng = get_policy("weighted"), random.Random(11)
    firsts = Counter(
        ids(p.rank([off, light, heavy], NoStats(), request=REQ, now=NOW, rng=rng))[0] for _ in range(4_000)
    )
    assert 2_860 <= firsts["heavy"] <= 3_140 and firsts["off"] == 0  # 75 %, σ ≈ 27
    assert rank("weighted", [off, light, heavy], seed=1)[-1] == "off"


def test_policies_are_deterministic_given_the_seed() -> None:
    cands = [cand(n, i, weight=1.0 + i, max_concurrency=4) for i, n in enumerate("abcdef")]
    stats = Stats({c.id: DeploymentStats(in_flight=1, last_used_at=0.0) for c in cands})
    for name in BUILT_IN:
        runs = {tuple(rank(name, cands, stats, seed=s)) for s in (42, 42, 42)}
        assert len(runs) == 1, name


# --- properties ----------------------------------------------------------------------------------

maybe_float = st.none() | st.floats(min_value=0.0, max_value=100.0)
prices = st.none() | st.builds(
    Price,
    st.floats(0.0, 50.0),
    st.floats(0.0, 50.0),
    st.none() | st.floats(0.0, 50.0),
    st.none() | st.floats(0.0, 20.0),
)
deployment_stats = st.none() | st.builds(
    DeploymentStats,
    in_flight=st.integers(0, 20),
    ttft_s=maybe_float,
    latency_s=maybe_float,
    tokens_per_s=st.none() | st.floats(0.0, 5_000.0),
    last_used_at=st.none() | st.floats(0.0, 2_000.0),
    server_running=st.none() | st.integers(0, 50),
    server_waiting=st.none() | st.integers(0, 50),
    server_slots=st.none() | st.integers(0, 16),
    probe_ok=st.none() | st.booleans(),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Candidate], Stats, RequestProfile]:
    n = draw(st.integers(0, 12))
    cands, by_id = [], {}
    for i in range(n):
        c = Candidate(
            id=f"b{i}/m", backend=f"b{i}", provider="p", model="m",
            order=draw(st.integers(0, 5)),  # repeated orders: ties must not break anything
            weight=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 100.0])),
            price=draw(prices),
            max_concurrency=draw(st.none() | st.integers(0, 8)),
            prior_ttft_s=draw(maybe_float),
            prior_tokens_per_s=draw(st.none() | st.floats(0.0, 5_000.0)),
        )  # fmt: skip
        cands.append(c)
        s = draw(deployment_stats)
        if s is not None:
            by_id[c.id] = s
    prompt = draw(st.integers(0, 200_000))
    request = RequestProfile(prompt, draw(st.integers(0, 8_000)), draw(st.booleans()), draw(st.integers(0, prompt)))
    return draw(st.permutations(cands)), Stats(by_id), request


PROPERTY = settings(
    max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(scenarios(), st.integers(0, 2**32), st.floats(0.0, 2_000.0))
def test_every_policy_returns_a_permutation(
    scenario: tuple[list[Candidate], Stats, RequestProfile], seed: int, now: float
) -> None:
    cands, stats, request = scenario
    for name in BUILT_IN:
        for p in (get_policy(name), Fastest(probe_rate=1.0)):
            ranked = p.rank(cands, stats, request=request, now=now, rng=random.Random(seed))
            assert sorted(c.id for c in ranked) == sorted(c.id for c in cands), name
            assert len({id(c) for c in ranked}) == len(cands)


@PROPERTY
@given(scenarios(), st.integers(0, 2**32))
def test_least_loaded_never_ranks_a_full_deployment_first(
    scenario: tuple[list[Candidate], Stats, RequestProfile], seed: int
) -> None:
    cands, stats, request = scenario
    ranked = get_policy("least-loaded").rank(cands, stats, request=request, now=NOW, rng=random.Random(seed))
    full = [at_capacity(c, stats.get(c.id)) for c in ranked]
    assert full == sorted(full)  # every False before every True


@PROPERTY
@given(scenarios())
def test_rankings_agree_with_the_estimates(scenario: tuple[list[Candidate], Stats, RequestProfile]) -> None:
    """What the router shows (estimates) is what the policies rank by."""
    cands, stats, request = scenario
    for c in cands:
        s = stats.get(c.id)
        if s is None or (s.in_flight == 0 and not s.server_running and not s.server_waiting):
            assert expected_completion_s(c, s, request) == expected_duration_s(c, s, request)
    ranked = Fastest(probe_rate=0.0).rank(cands, stats, request=request, now=NOW, rng=random.Random(0))
    times = [expected_completion_s(c, stats.get(c.id), request) for c in ranked]
    rest = times[1:] if ranked and ranked[0].prior_ttft_s is None else times  # an unmeasured one may go first
    assert all(a <= b for a, b in itertools.pairwise(rest))
    costs = [
        expected_cost_usd(c, request, stats.get(c.id))
        for c in get_policy("cheapest").rank(cands, stats, request=request, now=NOW, rng=random.Random(0))
    ]
    known = [x for x in costs if x is not None]
    assert costs[: len(known)] == known  # priced first
    assert all(a <= b * (1 + 1e-9) + 1e-300 for a, b in itertools.pairwise(known))


# --- the example ---------------------------------------------------------------------------------


def test_custom_policy_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "custom_policy.py"), run_name="__main__")
    out = capsys.readouterr().out.split("gpu-box load")
    assert out[1].split("\n")[1].strip().startswith("gpu-box/")  # 0.25: the box first
    assert out[2].split("\n")[-2].strip().startswith("gpu-box/")  # 0.88: the box last
    assert "self-hosted-first" in policies.known_policies()


def test_least_loaded_sends_only_overflow_to_a_much_slower_deployment() -> None:
    """Spare capacity is worth little where every request takes far longer (the bench's slowed backend)."""
    quick, slowed = cand("quick", 0, max_concurrency=10), cand("slowed", 1, max_concurrency=10)
    busy_quick = DeploymentStats(in_flight=6, ttft_s=0.1, tokens_per_s=200.0, last_used_at=NOW)
    idle_slowed = DeploymentStats(in_flight=0, ttft_s=1.0, tokens_per_s=50.0, last_used_at=NOW - 1)
    stats = Stats({"quick/m": busy_quick, "slowed/m": idle_slowed})
    assert rank("least-loaded", [quick, slowed], stats) == ["quick", "slowed"]
    # unused for a while, it is ranked by load again, so a recovered deployment gets re-measured
    long_idle = Stats({"quick/m": busy_quick, "slowed/m": DeploymentStats(ttft_s=1.0, last_used_at=NOW - 60)})
    assert rank("least-loaded", [quick, slowed], long_idle) == ["slowed", "quick"]


def test_least_loaded_sends_only_overflow_to_a_flaky_deployment() -> None:
    """Each failure costs a retry with backoff; a deployment failing 5 % of attempts makes the tail."""
    steady, flaky = cand("steady", 0, max_concurrency=10), cand("flaky", 1, max_concurrency=10)
    stats = Stats({
        "steady/m": DeploymentStats(in_flight=5, ttft_s=0.1, last_used_at=NOW),
        "flaky/m": DeploymentStats(in_flight=0, ttft_s=0.1, error_rate=0.05, last_used_at=NOW),
    })  # fmt: skip
    assert rank("least-loaded", [steady, flaky], stats) == ["steady", "flaky"]
    everyone_flaky = Stats(
        {
            "steady/m": DeploymentStats(in_flight=5, error_rate=0.1, last_used_at=NOW),
            "flaky/m": DeploymentStats(in_flight=0, error_rate=0.05, last_used_at=NOW),
        }
    )
    assert rank("least-loaded", [steady, flaky], everyone_flaky) == ["flaky", "steady"]  # then load decides
