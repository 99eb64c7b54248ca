"""Policy estimates the README states (cost with the prompt cache, capacity, priors), as numbers: a
change in how they are computed changes what a policy ranks first."""

from __future__ import annotations

import random

import pytest

from policies import Candidate, DeploymentStats, Price, RequestProfile, get_policy
from policies.estimates import (
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_S,
    at_capacity,
    capacity,
    expected_cost_usd,
    expected_ttft_s,
    prior_tokens_per_s,
    prior_ttft_s,
    token_cost_usd,
)

PRICE = Price(input_per_mtok=1.0, output_per_mtok=2.0, cached_input_per_mtok=0.1)


def cand(name: str, order: int = 0, **kw: object) -> Candidate:
    return Candidate(id=f"{name}/m", backend=name, provider=name, model="m", order=order, **kw)  # type: ignore[arg-type]


def test_cached_prompt_tokens_are_charged_at_the_cached_price_and_clamped() -> None:
    """Uncached prompt × input + cached × cached price + output × output; cached tokens within [0, prompt]."""
    usd = token_cost_usd(PRICE, RequestProfile(prompt_tokens=1_000_000, output_tokens=0, cached_prompt_tokens=400_000))
    assert usd == pytest.approx(0.6 + 0.04)
    assert token_cost_usd(PRICE, RequestProfile(1_000_000, 0, cached_prompt_tokens=5_000_000)) == pytest.approx(0.1)
    assert token_cost_usd(PRICE, RequestProfile(1_000_000, 0, cached_prompt_tokens=-5)) == pytest.approx(1.0, abs=1e-12)
    assert token_cost_usd(PRICE, RequestProfile(1_000_000, 0, cached_prompt_tokens=1)) == pytest.approx(1.0 - 0.9e-6)
    no_cached_rate = Price(input_per_mtok=1.0, output_per_mtok=2.0)
    assert token_cost_usd(no_cached_rate, RequestProfile(1_000_000, 500_000, cached_prompt_tokens=10)) == pytest.approx(
        2.0
    )


def test_the_observed_cache_share_lowers_the_expected_cost() -> None:
    """Without a stated cached count, the deployment's recent `cached_share` of the prompt is priced as cached."""
    c = cand("deepseek", price=PRICE)
    request = RequestProfile(prompt_tokens=1_000_000, output_tokens=0)
    assert expected_cost_usd(c, request, DeploymentStats(cached_share=0.0)) == pytest.approx(1.0)
    assert expected_cost_usd(c, request, DeploymentStats(cached_share=0.9)) == pytest.approx(0.1 + 0.09)
    assert expected_cost_usd(c, request, DeploymentStats(cached_share=1.0)) == pytest.approx(0.1)
    stated = RequestProfile(prompt_tokens=1_000_000, output_tokens=0, cached_prompt_tokens=500_000)
    assert expected_cost_usd(c, stated, DeploymentStats(cached_share=0.9)) == pytest.approx(0.5 + 0.05)


def test_priors_stand_in_until_measured() -> None:
    """A configured prior (0 included) is used; a missing or impossible one falls back to the default."""
    assert prior_ttft_s(cand("a", prior_ttft_s=0.0)) == 0.0
    assert prior_ttft_s(cand("a", prior_ttft_s=-1.0)) == DEFAULT_TTFT_S
    assert prior_tokens_per_s(cand("a", prior_tokens_per_s=0.5)) == 0.5
    assert prior_tokens_per_s(cand("a", prior_tokens_per_s=0.0)) == DEFAULT_TOKENS_PER_S
    c = cand("a", prior_ttft_s=2.0)
    assert expected_ttft_s(c, DeploymentStats(latency_s=2.0)) == 2.0
    assert expected_ttft_s(c, DeploymentStats(latency_s=0.5)) == 0.5  # a first token never comes after the whole answer


def test_capacity_is_the_smaller_of_the_cap_and_the_servers_slots() -> None:
    """`max_concurrency` and the server's reported slots: the smaller; a slot report of 0 is a glitch."""
    assert capacity(cand("a", max_concurrency=4), DeploymentStats(server_slots=2)) == 2
    assert capacity(cand("a", max_concurrency=2), DeploymentStats(server_slots=2)) == 2
    assert capacity(cand("a", max_concurrency=2), DeploymentStats(server_slots=8)) == 2
    assert capacity(cand("a"), DeploymentStats(server_slots=1)) == 1
    assert capacity(cand("a", max_concurrency=3), DeploymentStats(server_slots=0)) == 3
    assert capacity(cand("a"), None) is None
    assert at_capacity(cand("a", max_concurrency=1), None) is False
    assert at_capacity(cand("a", max_concurrency=1), DeploymentStats(in_flight=1)) is True


def test_least_loaded_weighs_outstanding_requests_by_capacity() -> None:
    """5 in flight on 100 slots is less loaded than 2 on 2 slots."""
    big, small = cand("big", 0), cand("small", 1)
    stats = {
        "big/m": DeploymentStats(in_flight=5, server_slots=100, ttft_s=0.1, latency_s=0.2),
        "small/m": DeploymentStats(in_flight=2, server_slots=2, ttft_s=0.1, latency_s=0.2),
    }

    class View:
        def get(self, candidate_id: str) -> DeploymentStats | None:
            return stats.get(candidate_id)

    policy = get_policy("least-loaded")
    firsts = {
        policy.rank([big, small], View(), request=RequestProfile(10, 10), now=1.0, rng=random.Random(seed))[0].backend
        for seed in range(20)
    }
    assert firsts == {"big"}


def test_least_loaded_spreads_two_equal_deployments() -> None:
    """Power of two choices among near-equals: two idle, equal deployments both get first place
    (concurrent callers do not herd onto one)."""
    a, b = cand("a", 0), cand("b", 1)
    same = DeploymentStats(in_flight=0, ttft_s=0.1, latency_s=0.2, last_used_at=0.5)

    class View:
        def get(self, candidate_id: str) -> DeploymentStats | None:
            return same

    policy = get_policy("least-loaded")
    firsts = [
        policy.rank([a, b], View(), request=RequestProfile(10, 10), now=1.0, rng=random.Random(seed))[0].backend
        for seed in range(40)
    ]
    assert 10 <= firsts.count("a") <= 30, firsts
