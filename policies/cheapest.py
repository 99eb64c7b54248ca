"""`cheapest`: the lowest expected cost for this request first."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policies.base import Candidate, RequestProfile, StatsView
from policies.estimates import expected_cost_usd, expected_duration_s

TIE_RELATIVE = 1e-12
"""Costs this close (relative to the cheaper) are a tie, broken by speed."""


class Cheapest:
    """Rank by expected cost (`estimates.expected_cost_usd`), ascending.

    Ties (costs within `TIE_RELATIVE` of the cheapest of a run) go to the faster deployment
    (`estimates.expected_duration_s`), then to config order. Deployments with no known price rank
    after every priced one, fastest first: the router can only tell whether they fit a price cap
    by not having one, and a known price is preferred to a guess.
    """

    name = "cheapest"

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
        priced: list[tuple[float, float, int, int, Candidate]] = []
        unpriced: list[tuple[float, int, int, Candidate]] = []
        for i, c in enumerate(candidates):
            s = get(c.id)
            duration = expected_duration_s(c, s, request)
            cost = expected_cost_usd(c, request, s)
            if cost is None:
                unpriced.append((duration, c.order, i, c))
            else:
                priced.append((cost, duration, c.order, i, c))
        priced.sort()
        unpriced.sort()
        ranked: list[Candidate] = []
        n = len(priced)
        start = 0
        while start < n:
            anchor = priced[start][0]
            limit = anchor + abs(anchor) * TIE_RELATIVE
            end = start + 1
            while end < n and priced[end][0] <= limit:
                end += 1
            if end - start == 1:
                ranked.append(priced[start][4])
            else:  # a run of tied costs: faster first, then config order
                ranked.extend(t[4] for t in sorted(priced[start:end], key=lambda t: (t[1], t[2], t[3])))
            start = end
        ranked.extend(t[3] for t in unpriced)
        return ranked
