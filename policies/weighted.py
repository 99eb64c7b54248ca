"""`weighted`: a random order, biased by each deployment's configured weight."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policies.base import Candidate, RequestProfile, StatsView


class Weighted:
    """A weighted shuffle without replacement (Efraimidis–Spirakis): each deployment draws the key
    `u ** (1 / weight)` with `u` uniform from `rng`, and the highest key goes first.

    The first place goes to each deployment in proportion to its weight (3 : 1 → 75 % : 25 %),
    the next among the rest likewise, and so on. Weights of 0 or less (or NaN) rank last, in
    config order; an infinite weight ranks first. Stats are not read.
    """

    name = "weighted"

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        request: RequestProfile,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]:
        draw = rng.random
        keyed: list[tuple[float, int, int, Candidate]] = []
        last: list[tuple[int, int, Candidate]] = []
        for i, c in enumerate(candidates):
            w = c.weight
            if w > 0.0:
                keyed.append((-(draw() ** (1.0 / w)), c.order, i, c))
            else:
                last.append((c.order, i, c))
        keyed.sort()
        last.sort()
        ranked = [t[3] for t in keyed]
        ranked.extend(t[2] for t in last)
        return ranked
