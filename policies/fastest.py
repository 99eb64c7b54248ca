"""`fastest`: the shortest expected response time for this request first, with occasional probes."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from policies.base import Candidate, DeploymentStats, RequestProfile, StatsView
from policies.estimates import expected_tokens_per_s, prior_ttft_s

DEFAULT_PROBE_AFTER_S = 30.0
DEFAULT_PROBE_RATE = 0.02
_NEVER = -math.inf


def ranking_duration_s(candidate: Candidate, stats: DeploymentStats | None, request: RequestProfile) -> float:
    """`estimates.expected_duration_s`, with the herding guard: while a deployment has requests in
    flight, its time to first token counts as no less than its prior TTFT.

    The stats' peak-EWMA decays toward zero while a deployment is unused, so an idle one looks
    fast and is retried: rediscovery for free. Its first retry puts a request in flight, but until
    that request answers the estimate stays decayed, and every concurrent caller would pick it
    too. So a deployment that is busy is not believed faster than its prior (`prior_ttft_s` from
    config, else `estimates.DEFAULT_TTFT_S`) at the part of the estimate that decays; the decode
    speed (a plain EWMA) still counts. Idle deployments are ranked by their estimate as is.

    The cost: a busy deployment that really is faster than its prior is ranked as if it were no
    faster (with the 1 s default, a busy 0.2 s deployment counts as 1 s, and an idle 0.3 s one
    goes ahead of it). Set `prior_ttft_s` near a deployment's real TTFT to keep that small.
    """
    if stats is None:
        return prior_ttft_s(candidate) + request.output_tokens / expected_tokens_per_s(candidate, None)
    ttft = stats.ttft_s
    if ttft is None and stats.tokens_per_s is None and stats.latency_s is not None:
        # Only non-streamed samples: the whole-response latency is the estimate (and decays).
        latency = stats.latency_s
        if stats.in_flight > 0:
            floor = prior_ttft_s(candidate)
            if latency < floor:
                return floor
        return latency
    prior = prior_ttft_s(candidate)
    if ttft is None:
        ttft = stats.latency_s if stats.latency_s is not None and stats.latency_s < prior else prior
    if stats.in_flight > 0 and ttft < prior:
        ttft = prior
    tps = stats.tokens_per_s
    if tps is None or tps <= 0.0:
        tps = expected_tokens_per_s(candidate, None)
    return ttft + request.output_tokens / tps


def _unmeasured(stats: DeploymentStats | None) -> bool:
    """No estimate yet, nothing in flight to produce one, and not known to be down."""
    if stats is None:
        return True
    return (
        stats.ttft_s is None
        and stats.latency_s is None
        and stats.tokens_per_s is None
        and stats.in_flight == 0
        and stats.probe_ok is not False
    )


class Fastest:
    """Rank by expected response time (`ranking_duration_s`), ascending; ties by config order.

    Before a deployment has samples its configured priors stand in; one with neither samples nor
    a configured prior (nor a request in flight) goes first, once, so it gets measured rather than
    judged by a default. Probing: when some deployment is stale
    (never used, or not since `probe_after_s`) and has nothing in flight, then with probability
    `probe_rate` (one draw from `rng` per call) the stalest such one — never used first, then the
    longest unused, then config order — is moved to the front. At most one is moved per call, and
    a deployment with a request in flight (a probe already under way) is never moved; nor is one
    whose load probe failed (`probe_ok` False).
    """

    name = "fastest"

    def __init__(self, probe_after_s: float = DEFAULT_PROBE_AFTER_S, probe_rate: float = DEFAULT_PROBE_RATE) -> None:
        if not probe_after_s >= 0.0:
            raise ValueError(f"probe_after_s must be >= 0, not {probe_after_s!r}")
        if not 0.0 <= probe_rate <= 1.0:
            raise ValueError(f"probe_rate must be within [0, 1], not {probe_rate!r}")
        self.probe_after_s = probe_after_s
        self.probe_rate = probe_rate

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        request: RequestProfile,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]:
        get = stats.get
        stale_before = now - self.probe_after_s
        keyed: list[tuple[float, int, int, Candidate]] = []
        probe: tuple[float, int, int] | None = None  # (last used or -inf, order, index) of the stalest
        unexplored: int | None = None  # index of the first deployment never tried that has no prior
        for i, c in enumerate(candidates):
            s = get(c.id)
            keyed.append((ranking_duration_s(c, s, request), c.order, i, c))
            if unexplored is None and c.prior_ttft_s is None and _unmeasured(s):
                unexplored = i
            if s is None:
                key = (_NEVER, c.order, i)
            elif s.in_flight > 0 or s.probe_ok is False:
                continue
            elif s.last_used_at is None:
                key = (_NEVER, c.order, i)
            elif s.last_used_at < stale_before:
                key = (s.last_used_at, c.order, i)
            else:
                continue
            if probe is None or key < probe:
                probe = key
        keyed.sort()
        if unexplored is not None:  # nothing known and nothing configured: measure it once, first
            at = next(j for j, t in enumerate(keyed) if t[2] == unexplored)
            keyed.insert(0, keyed.pop(at))
        elif probe is not None and self.probe_rate > 0.0 and rng.random() < self.probe_rate:
            at = next(j for j, t in enumerate(keyed) if t[2] == probe[2])
            keyed.insert(0, keyed.pop(at))
        return [t[3] for t in keyed]
