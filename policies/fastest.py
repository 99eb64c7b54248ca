"""`fastest`: the shortest expected completion time for this request first (the wait behind the
requests already there included), with occasional probes."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from policies.base import Candidate, DeploymentStats, RequestProfile, StatsView
from policies.estimates import expected_completion_s

DEFAULT_PROBE_AFTER_S = 30.0
DEFAULT_PROBE_RATE = 0.02
_NEVER = -math.inf


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
    """Rank by expected completion time (`estimates.expected_completion_s`), ascending; ties by config order.

    Completion time is the request's own expected duration (TTFT + output tokens ÷ decode speed,
    from the live peak-EWMA estimates, else the configured priors) × (1 + outstanding ÷ capacity):
    the wait the requests already there imply, as in Tower's `rtt × (pending + 1)`, spread over the
    deployment's slots when `max_concurrency` or the server's slot count is known. That term is
    also what keeps concurrent callers from herding onto an idle deployment whose estimate has
    decayed: each request sent there raises its cost until its answer brings a real sample.

    Before a deployment has samples its configured priors stand in; one with neither samples nor
    a configured prior (nor a request in flight) goes first, once, so it gets measured rather than
    judged by a default. Probing: when some deployment is stale
    (never used, or not since `probe_after_s`) and has nothing in flight, then with probability
    `probe_rate` (one draw from `rng` per call) the stalest such one — never used first, then the
    longest unused, then config order — is moved to the front. At most one is moved per call, and
    a deployment with a request in flight (a probe already under way) is never moved; nor is one
    whose load probe failed (`probe_ok` False). So probes take at most `probe_rate` of calls, and
    each stale deployment gets about one per `probe_after_s`.
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
            keyed.append((expected_completion_s(c, s, request), c.order, i, c))
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
