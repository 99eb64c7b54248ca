"""How long one `rank` call takes, per policy, for 10 and 1,000 candidates.

    python bench/rank_speed.py [--sizes 10 1000] [--budget-s 0.3]

Synthetic candidates (mixed prices: per-token with and without a cached rate, per-hour, none;
some with `max_concurrency` and priors) and a dict-backed stats view in which most candidates
have samples, some in flight, some stale. Each cell runs the policy repeatedly for about
`--budget-s` seconds (after a warm-up) and prints the best of 5 repeats in µs per call and in
ns per candidate (flat across sizes = linear growth). Target: <= 20 µs per call for 10.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/x.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package: the repo root goes first, bench/ last (for its helper modules).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]


from policies import Candidate, DeploymentStats, Price, RequestProfile, get_policy  # noqa: E402

NAMES = ["ordered", "weighted", "cheapest", "fastest", "least-loaded"]
TARGET_US = 20.0


class View:
    def __init__(self, by_id: dict[str, DeploymentStats]) -> None:
        self.get = by_id.get  # the router's view is a lookup too


def scenario(n: int, seed: int = 0) -> tuple[list[Candidate], View]:
    rng = random.Random(seed)
    candidates: list[Candidate] = []
    by_id: dict[str, DeploymentStats] = {}
    for i in range(n):
        kind = i % 4
        price = (
            Price(0.15, 0.60, cached_input_per_mtok=0.075),
            Price(rng.uniform(0.1, 3.0), rng.uniform(0.3, 10.0)),
            Price(0.0, 0.0, per_hour=rng.uniform(0.5, 4.0)),
            None,
        )[kind]
        c = Candidate(
            id=f"b{i}/model", backend=f"b{i}", provider="p", model="model", order=i,
            weight=rng.choice([1.0, 2.0, 3.0]), price=price,
            max_concurrency=rng.choice([None, 4, 16]),
            prior_ttft_s=rng.choice([None, 0.3]), prior_tokens_per_s=rng.choice([None, 400.0]),
        )  # fmt: skip
        candidates.append(c)
        if rng.random() < 0.9:
            by_id[c.id] = DeploymentStats(
                in_flight=rng.choice([0, 0, 1, 2]),
                requests=100,
                ttft_s=rng.uniform(0.05, 2.0) if rng.random() < 0.8 else None,
                latency_s=rng.uniform(0.5, 5.0),
                tokens_per_s=rng.uniform(30.0, 2000.0) if rng.random() < 0.8 else None,
                last_used_at=rng.choice([None, 990.0, 900.0]),
                server_running=rng.choice([None, 2]),
                server_waiting=rng.choice([None, 0, 1]),
                server_slots=rng.choice([None, 8]),
            )
    rng.shuffle(candidates)
    return candidates, View(by_id)


def time_per_call(name: str, n: int, budget_s: float) -> float:
    candidates, view = scenario(n)
    request = RequestProfile(prompt_tokens=3_000, output_tokens=400, stream=True, cached_prompt_tokens=1_000)
    policy = get_policy(name)
    rng = random.Random(1)
    rank = policy.rank
    for _ in range(max(10, 2_000 // n)):  # warm-up
        rank(candidates, view, request=request, now=1_000.0, rng=rng)
    start = time.perf_counter()
    rank(candidates, view, request=request, now=1_000.0, rng=rng)
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(10, int(budget_s / 5 / once))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            rank(candidates, view, request=request, now=1_000.0, rng=rng)
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1_000])
    parser.add_argument("--budget-s", type=float, default=0.3, help="time per cell (5 repeats share it)")
    args = parser.parse_args()
    header = f"{'policy':<14}" + "".join(f"{f'n={n} µs/call':>18}{'ns/cand':>10}" for n in args.sizes)
    print(header)
    print("-" * len(header))
    slow = []
    for name in NAMES:
        row = f"{name:<14}"
        for n in args.sizes:
            seconds = time_per_call(name, n, args.budget_s)
            row += f"{seconds * 1e6:>18.2f}{seconds * 1e9 / n:>10.0f}"
            if n == 10 and seconds * 1e6 > TARGET_US:
                slow.append(name)
        print(row)
    if 10 in args.sizes:
        verdict = "met" if not slow else f"missed by {', '.join(slow)}"
        print(f"\ntarget <= {TARGET_US:g} µs for 10 candidates: {verdict}")


if __name__ == "__main__":
    main()
