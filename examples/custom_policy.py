"""A policy of your own: prefer the self-hosted box unless it is busy, otherwise the cheapest.

python examples/custom_policy.py      # ranks a few made-up deployments; no servers needed

A policy is any object with a `name` and a `rank(candidates, stats, *, request, now, rng)` that
returns the candidates best first, dropping none. It does no I/O and reads no clock: `now` and
a seeded `rng` are handed in. `policies.estimates` has the numbers the built-in ones use (expected
cost, time, load). Register a factory under a name and use that name in config
(`policy: self-hosted-first`) or per call (`route={"policy": "self-hosted-first"}`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import policies
from policies import Candidate, DeploymentStats, Price, RequestProfile, StatsView
from policies.cheapest import Cheapest
from policies.estimates import expected_cost_usd, load


class SelfHostedFirst:
    """Self-hosted deployments (priced per hour) first while their load is at most `busy_at`,
    least loaded first; everything else after them, cheapest first."""

    name = "self-hosted-first"

    def __init__(self, busy_at: float = 0.8) -> None:
        self.busy_at = busy_at
        self.cheapest = Cheapest()

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        request: RequestProfile,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]:
        by_cost = self.cheapest.rank(candidates, stats, request=request, now=now, rng=rng)
        own = {c.id: load(c, stats.get(c.id)) for c in by_cost if c.price is not None and c.price.per_hour is not None}
        idle = sorted((c for c in by_cost if c.id in own and own[c.id] <= self.busy_at), key=lambda c: own[c.id])
        return idle + [c for c in by_cost if c not in idle]


policies.register("self-hosted-first", SelfHostedFirst)


class Snapshot:
    """Made-up live stats, by candidate id (the router passes its own view)."""

    def __init__(self, by_id: dict[str, DeploymentStats]) -> None:
        self.by_id = by_id

    def get(self, candidate_id: str) -> DeploymentStats | None:
        return self.by_id.get(candidate_id)


def main() -> None:
    candidates = [
        Candidate("groq/gpt-oss-120b", "groq", "groq", "openai/gpt-oss-120b", order=0,
                  price=Price(0.15, 0.60, cached_input_per_mtok=0.075)),
        Candidate("cerebras/gpt-oss-120b", "cerebras", "cerebras", "gpt-oss-120b", order=1,
                  price=Price(0.25, 0.69)),
        Candidate("gpu-box/gpt-oss-120b", "gpu-box", "vllm", "openai/gpt-oss-120b", order=2,
                  price=Price(0.0, 0.0, per_hour=2.50), max_concurrency=8),
    ]  # fmt: skip
    request = RequestProfile(prompt_tokens=2_000, output_tokens=300)
    policy = policies.get_policy("self-hosted-first")
    for box_in_flight in (2, 7):
        stats = Snapshot({
            "groq/gpt-oss-120b": DeploymentStats(ttft_s=0.2, tokens_per_s=500.0),
            "cerebras/gpt-oss-120b": DeploymentStats(ttft_s=0.3, tokens_per_s=1500.0),
            "gpu-box/gpt-oss-120b": DeploymentStats(in_flight=box_in_flight, ttft_s=0.5, tokens_per_s=90.0),
        })  # fmt: skip
        ranked = policy.rank(candidates, stats, request=request, now=100.0, rng=random.Random(0))
        box = candidates[2]
        print(f"gpu-box load {load(box, stats.get(box.id)):.2f}:")
        for c in ranked:
            cost = expected_cost_usd(c, request, stats.get(c.id))
            print(f"  {c.id:<24} ${cost:.6f}" if cost is not None else f"  {c.id:<24} price unknown")


if __name__ == "__main__":
    main()
