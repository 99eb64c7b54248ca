"""Expected cost, time and load of a candidate for a request: pure functions of config and stats.

Policies rank by these; the router checks its constraints (price caps, deadlines) and writes
its explain output with the same numbers, so a ranking and its explanation never disagree.

Where no sample exists yet the estimates fall back to the candidate's configured priors
(`Candidate.prior_ttft_s`, `Candidate.prior_tokens_per_s`), then to the module defaults
below. The stats are read as given: `ttft_s` and `latency_s` are peak-EWMAs that the stats
store has already decayed to `now` (an idle deployment looks fast again, which is how it gets
retried), `tokens_per_s` is a plain EWMA.
"""

from __future__ import annotations

import math
from dataclasses import replace

from policies.base import Candidate, DeploymentStats, Price, RequestProfile

DEFAULT_TTFT_S = 1.0
"""Time to first token assumed for a deployment with no samples and no configured prior."""
DEFAULT_TOKENS_PER_S = 50.0
"""Decode speed assumed for a deployment with no samples and no configured prior."""

_PER_MTOK = 1e-6
_PER_SECOND_OF_HOUR = 1.0 / 3600.0
_INF = math.inf


def prior_ttft_s(candidate: Candidate) -> float:
    """The TTFT to assume before any sample: the configured prior, else `DEFAULT_TTFT_S`."""
    prior = candidate.prior_ttft_s
    return prior if prior is not None and prior >= 0.0 else DEFAULT_TTFT_S


def prior_tokens_per_s(candidate: Candidate) -> float:
    """The decode speed to assume before any sample: the configured prior, else `DEFAULT_TOKENS_PER_S`."""
    prior = candidate.prior_tokens_per_s
    return prior if prior is not None and prior > 0.0 else DEFAULT_TOKENS_PER_S


def expected_ttft_s(candidate: Candidate, stats: DeploymentStats | None) -> float:
    """Expected seconds to the first token.

    In order: the streamed TTFT estimate; with only non-streamed samples, the prior capped at the
    whole-response latency (a first token never comes later than the whole answer, but the latency
    alone does not say how it splits between waiting and decoding); else the prior.
    """
    prior = prior_ttft_s(candidate)
    if stats is None:
        return prior
    ttft = stats.ttft_s
    if ttft is not None:
        return ttft
    latency = stats.latency_s
    if latency is not None and latency < prior:
        return latency
    return prior


def expected_tokens_per_s(candidate: Candidate, stats: DeploymentStats | None) -> float:
    """Expected decode speed after the first token: the EWMA of streamed samples, else the prior."""
    if stats is not None:
        tps = stats.tokens_per_s
        if tps is not None and tps > 0.0:
            return tps
    return prior_tokens_per_s(candidate)


def expected_duration_s(candidate: Candidate, stats: DeploymentStats | None, request: RequestProfile) -> float:
    """Expected seconds for the whole response: TTFT + output tokens ÷ decode speed.

    With streamed samples (`ttft_s` or `tokens_per_s`) the formula scales with this request's
    `output_tokens`. With only non-streamed samples, the whole-response `latency_s` is the
    estimate as it stands (it cannot be split into TTFT and decode). With no samples, the priors.
    """
    if stats is not None and stats.ttft_s is None and stats.tokens_per_s is None and stats.latency_s is not None:
        return stats.latency_s
    return expected_ttft_s(candidate, stats) + request.output_tokens / expected_tokens_per_s(candidate, stats)


def token_cost_usd(price: Price, request: RequestProfile) -> float:
    """The per-token part of a price for a request (USD): uncached prompt + cached prompt + output."""
    prompt = request.prompt_tokens
    cached = request.cached_prompt_tokens
    if cached > prompt:
        cached = prompt
    elif cached < 0:
        cached = 0
    cached_rate = price.cached_input_per_mtok
    if cached_rate is None:
        cached_rate = price.input_per_mtok
    return (
        (prompt - cached) * price.input_per_mtok + cached * cached_rate + request.output_tokens * price.output_per_mtok
    ) * _PER_MTOK


def expected_cost_usd(
    candidate: Candidate, request: RequestProfile, stats: DeploymentStats | None = None
) -> float | None:
    """Expected USD for serving `request` on `candidate`; None when the candidate has no price.

    Prompt tokens not served from cache at the input price, cached ones (`cached_prompt_tokens`,
    or else the deployment's recently observed `cached_share` of the prompt) at the cached
    input price (the input price when the provider has none), output tokens at the output price,
    all per million. A self-hosted `per_hour` price adds `per_hour / 3600 ×` the expected
    duration (from `stats`, else the priors): the machine's time the request occupies, counted as
    if it had the machine to itself (conservative for a server that batches).
    """
    price = candidate.price
    if price is None:
        return None
    if not request.cached_prompt_tokens and stats is not None and stats.cached_share > 0:
        # the share of the prompt this provider recently served from its prompt cache (DeepSeek's hits)
        request = replace(request, cached_prompt_tokens=round(request.prompt_tokens * stats.cached_share))
    cost = token_cost_usd(price, request)
    if price.per_hour:  # a free machine costs nothing, however long (and 0 × an endless estimate is not NaN)
        cost += price.per_hour * _PER_SECOND_OF_HOUR * expected_duration_s(candidate, stats, request)
    return cost


def capacity(candidate: Candidate, stats: DeploymentStats | None) -> int | None:
    """Requests the deployment can serve at once: the smaller of `max_concurrency` (config) and the
    server's reported `server_slots`; None when neither is known. A reported slot count of 0 or
    less is ignored (a probe glitch); a configured `max_concurrency` of 0 is a capacity of 0."""
    cap = candidate.max_concurrency
    if stats is not None:
        slots = stats.server_slots
        if slots is not None and slots > 0 and (cap is None or slots < cap):
            cap = slots
    return cap


def outstanding(stats: DeploymentStats | None) -> int:
    """Requests outstanding at the deployment: ours in flight, or what the server reports, whichever is more.

    With a server report (`server_running`), `max(in_flight, server_running + server_waiting)`:
    the server's count includes other clients' requests, ours includes those the probe has not
    seen yet, and adding both would count ours twice. Without one, `in_flight + server_waiting`.
    """
    if stats is None:
        return 0
    waiting = stats.server_waiting or 0
    running = stats.server_running
    if running is None:
        return stats.in_flight + waiting
    reported = running + waiting
    return reported if reported > stats.in_flight else stats.in_flight


def load(candidate: Candidate, stats: DeploymentStats | None) -> float:
    """Outstanding requests relative to capacity: 1.0 means every slot is busy, above it a queue.

    `outstanding(stats) / capacity(...)`. With no capacity known the load is the outstanding count
    itself (as if the deployment had one slot), so an uncapped cloud deployment with two requests in
    flight has load 2.0: configure `max_concurrency` to put deployments on one scale. A server whose
    last load probe failed (`probe_ok` False) has infinite load, as does a capacity of 0.
    """
    if stats is not None and stats.probe_ok is False:
        return _INF
    n = outstanding(stats)
    cap = capacity(candidate, stats)
    if cap is None:
        return float(n)
    if cap <= 0:
        return _INF
    return n / cap


def expected_completion_s(candidate: Candidate, stats: DeploymentStats | None, request: RequestProfile) -> float:
    """Expected seconds until this request is answered, counting the requests already there.

    `expected_duration_s` × (1 + outstanding ÷ capacity): each outstanding request (ours in flight
    and the queue the server reports) takes a share of the deployment for about one service time,
    spread over its slots. With no capacity known this is Tower's peak-EWMA load, `rtt × (pending
    + 1)` (one slot assumed); with `max_concurrency` or reported slots, a deployment that serves
    many at once is charged little for each. A capacity of 0 never completes (infinite).
    """
    duration = expected_duration_s(candidate, stats, request)
    n = outstanding(stats)
    if n <= 0:
        return duration
    cap = capacity(candidate, stats)
    if cap is None:
        cap = 1
    elif cap <= 0:
        return _INF
    return duration * (1.0 + n / cap)


def at_capacity(candidate: Candidate, stats: DeploymentStats | None) -> bool:
    """Whether the deployment already has `max_concurrency` of our requests in flight."""
    cap = candidate.max_concurrency
    if cap is None:
        return False
    return (stats.in_flight if stats is not None else 0) >= cap


__all__ = [
    "DEFAULT_TOKENS_PER_S",
    "DEFAULT_TTFT_S",
    "at_capacity",
    "capacity",
    "expected_completion_s",
    "expected_cost_usd",
    "expected_duration_s",
    "expected_tokens_per_s",
    "expected_ttft_s",
    "load",
    "outstanding",
    "prior_tokens_per_s",
    "prior_ttft_s",
]
