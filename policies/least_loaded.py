"""`least-loaded`: the deployment with the most spare capacity first, spread by power of two choices."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policies.base import Candidate, RequestProfile, StatsView
from policies.estimates import at_capacity, capacity, expected_duration_s, load

NEAR_RELATIVE = 0.10
"""Loads within this share of the lowest count as near-equal (as do loads one request above it)."""
SLOW_FACTOR = 2.0
"""A deployment expected to take more than this many times the fastest one's time is used only as
overflow: spare capacity is worth little when every request there takes twice as long."""
FLAKY_ERROR_RATE = 0.02
"""A deployment failing at least this share of recent attempts takes only overflow too: each failure
costs a retry with backoff, and those calls make the tail."""
PROBE_AFTER_S = 30.0
"""A slow deployment unused this long is tried again (first among the slow), so a recovered one is seen."""


class LeastLoaded:
    """Rank by `estimates.load` (outstanding requests ÷ capacity), ascending.

    Always taking the minimum makes concurrent callers, who all see the same stats, herd onto
    one deployment. So the first place goes by power of two choices among the near-equal: the
    deployments whose load is within `NEAR_RELATIVE` of the lowest, or at most one request above
    it (one request is `1 / capacity` of load, or 1 with no capacity known). Two of them are
    drawn at random (`rng`) and the one with the lower load goes first (on a tie, the one drawn
    first). Everything else follows by load, then config order. Deployments at capacity
    (`estimates.at_capacity`) come last, by load: the router will not send to them, but a
    ranking drops nothing. Before them come the slow and the flaky: deployments expected to take
    more than `SLOW_FACTOR` × the fastest one's time (`estimates.expected_duration_s`), or failing at
    least `FLAKY_ERROR_RATE` of recent attempts, take only overflow, unless unused for
    `PROBE_AFTER_S`, when they are ranked by load again to be re-measured.
    """

    name = "least-loaded"

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
        open_: list[tuple[float, int, int, Candidate, float]] = []
        full: list[tuple[float, int, int, Candidate]] = []
        durations: dict[int, float] = {}
        flaky: set[int] = set()
        stale: set[int] = set()
        for i, c in enumerate(candidates):
            s = get(c.id)
            c_load = load(c, s)
            if at_capacity(c, s):
                full.append((c_load, c.order, i, c))
                continue
            slots = capacity(c, s)
            open_.append((c_load, c.order, i, c, 1.0 / slots if slots else 1.0))
            durations[i] = expected_duration_s(c, s, request)
            if s is not None and s.error_rate >= FLAKY_ERROR_RATE:
                flaky.add(i)
            if s is None or s.last_used_at is None or now - s.last_used_at > PROBE_AFTER_S:
                stale.add(i)
        open_.sort()
        full.sort()
        if durations:  # the slow go after the rest (in load order), unless unused long enough to retry
            limit = min(durations.values()) * SLOW_FACTOR
            demoted = {i for i, d in durations.items() if (d > limit or i in flaky) and i not in stale}
            if len(demoted) == len(open_):
                demoted = set()  # nothing better to prefer
            slow = [t for t in open_ if t[2] in demoted]
            open_ = [t for t in open_ if t[2] not in demoted]
        else:
            slow = []
        ranked = [t[3] for t in open_]
        if len(open_) >= 2:
            best = open_[0][0]
            near_limit = best * (1.0 + NEAR_RELATIVE)
            near = [j for j, t in enumerate(open_) if t[0] <= near_limit or t[0] - t[4] <= best]
            n = len(near)
            if n >= 2:
                a = int(rng.random() * n)
                b = int(rng.random() * (n - 1))
                if b >= a:
                    b += 1
                first = near[a] if open_[near[a]][0] <= open_[near[b]][0] else near[b]
                if first:
                    ranked.insert(0, ranked.pop(first))
        ranked.extend(t[3] for t in slow)
        ranked.extend(t[3] for t in full)
        return ranked
