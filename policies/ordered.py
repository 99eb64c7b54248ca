"""`ordered`: a priority list, in config order (as adjusted by per-call `prefer` hints)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policies.base import Candidate, RequestProfile, StatsView


class Ordered:
    """Try deployments in the order they are listed: predictable, and the fallback default."""

    name = "ordered"

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        request: RequestProfile,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.order)
