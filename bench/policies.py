"""Routing policies against a simulated fleet: cost, latency, errors and traffic share, with targets.

    python bench/policies.py [--scenario mixed|spread|one-slot] [--requests 2000] [--concurrency N] [--quick]
                             [--policies cheapest,fastest]

A fleet of loopback backends (`bench/sim_fleet.py`, its own OS process) with distinct TTFT,
decode speed, price, capacity and error rate, one of which slows down part-way through and
recovers `--recover-after` seconds later (`--scenario mixed`, the default). Two more fleets test
`fastest` under concurrency: `spread` (2/30/120 ms backends, same price, unbounded capacity,
non-streamed, concurrency 4 by default) and `one-slot` (a 50 ms backend that serves one request at
a time beside 150 ms and 400 ms ones with unbounded capacity, non-streamed, concurrency 8). In one
process run, in order: every policy (`cheapest`, `fastest`, `least-loaded`, `ordered`,
`weighted`), a uniform random baseline (a tiny policy registered here), then each backend alone
(an alias with that one deployment). Every run gets a fresh router (fresh stats) and restarts the
fleet's clock, counters and random draws (`POST /control/start`), so each sees the same scenario:
the same request sequence (prompts, `max_tokens` 30-60), the same slow-down at `--slow-at`
seconds. "Best single backend in hindsight" is the best of the single-backend runs by the
metric in question.

Per run: cost per successful request (computed here from each route record's usage × the
configured prices), p50/p99 end-to-end latency (stream fully read), p50 TTFT, error rate
(calls that raised), failed attempts per call, share of calls per backend, and the CPU the
client and the fleet used (2 cores are shared: a starved client inflates every latency).

Config of the policy runs: every deployment has its price, `max_concurrency` = the backend's
capacity (`--caps none` drops it), priors = its nominal TTFT and decode speed (`--no-priors`
drops them), `weight` = its capacity (for `weighted`), provider `vllm` (its `/metrics` load is
polled: `--provider openai` to not). The single-backend aliases have no `max_concurrency`, so
requests beyond the capacity queue at the server (a cap would refuse them instead).

Targets (printed with MET/MISSED): `cheapest` cost within 1 % of the cheapest backend alone;
`fastest` p50 within 1.1x of the best single backend's own p50, it shifts away from the
backend that slows (its share of new requests below 10 %) within 1 s and is back on it (half its
share before) within 30 s of its recovery; `spread`: `fastest` sends >= 95 % of calls (probes
included) to the 2 ms backend; `one-slot`: `fastest`'s mean latency beats both the one-slot
backend alone and uniform random; `least-loaded` p99 at most 0.7x uniform random's; ranking 10
deployments <= 20 µs and 1,000 linear (bench/rank_speed.py).

`--patch NAME` applies a proposed fix by monkeypatching inside this process only (labelled in
the output); see PATCHES.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named like the `policies` package: keep bench/ off the import path (Python puts a
# script's own folder first) and load the bench helpers by file instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _bench_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rank_speed = _bench_module("rank_speed")
sim_fleet = _bench_module("sim_fleet")

ALIAS = "bench"
POLICIES = ("cheapest", "fastest", "least-loaded", "ordered", "weighted")
RANDOM = "uniform-random"
SLOW_SHARE = 0.10
"""The slowed backend counts as abandoned once its share of new requests is below this."""
SHIFT_WINDOW_S = 1.0

# name:sim-fields,in=USD/Mtok,out=USD/Mtok  (list order = config order, which `ordered` follows)
DEFAULT_FLEET = [
    "mid-flaky:ttft=0.20,tps=100,cap=16,err=0.05,status=503,in=0.60,out=2.40",
    "fast-pricey:ttft=0.10,tps=160,cap=16,in=3.00,out=12.00",
    "turbo-slows:ttft=0.06,tps=200,cap=16,slow_at=auto,slow_x=4,slow_until=auto,in=1.50,out=6.00",
    "small:ttft=0.10,tps=120,cap=4,in=0.30,out=1.20",
    "cheap-slow:ttft=0.30,tps=150,cap=32,in=0.10,out=0.40",
]
UNBOUNDED = 100_000
"""The capacity of a backend that never queues (and its `max_concurrency` in the config)."""


@dataclass(frozen=True)
class Scenario:
    """A fleet and how it is driven; `--backend`, `--concurrency` and `--no-stream` override."""

    fleet: list[str]
    concurrency: int = 32
    stream: bool = True
    about: str = ""


SCENARIOS = {
    "mixed": Scenario(
        DEFAULT_FLEET, about="five backends; turbo-slows slows x4 at --slow-at and recovers --recover-after later"
    ),
    # non-streamed: the sim paces streamed tokens at >= 20 ms, which would hide a 2 ms backend
    "spread": Scenario(
        [f"{name}:ttft={ttft},tps=100000,cap={UNBOUNDED},in=1.00,out=1.00"
         for name, ttft in (("ms2", 0.002), ("ms30", 0.030), ("ms120", 0.120))],
        concurrency=4, stream=False,
        about="2/30/120 ms backends, same price, unbounded capacity: fastest keeps >= 95 % on the 2 ms one",
    ),
    "one-slot": Scenario(
        ["solo:ttft=0.05,tps=1000,cap=1,in=1.00,out=1.00",
         f"mid:ttft=0.15,tps=1000,cap={UNBOUNDED},in=1.00,out=1.00",
         f"far:ttft=0.40,tps=1000,cap={UNBOUNDED},in=1.00,out=1.00"],
        concurrency=8, stream=False,
        about="the fastest backend serves one request at a time: fastest beats always-solo and random on mean latency",
    ),
}  # fmt: skip
FLEET_SHARE = 0.95
"""`spread`: the share of calls `fastest` must send to the fastest backend."""
SYSTEM = "You are a terse assistant. Answer in one short paragraph."
TOPICS = ["foxes", "routers", "queues", "tail latency", "prices", "caches", "retries", "streams"]


# --- the fleet as the router sees it ---------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A simulated backend and what the router's config says of it."""

    sim: sim_fleet.SimBackend
    input_per_mtok: float
    output_per_mtok: float

    @property
    def name(self) -> str:
        return self.sim.name

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) * 1e-6


def parse_member(text: str, slow_at_s: float, slow_until_s: float) -> Member:
    text = text.replace("slow_at=auto", f"slow_at={slow_at_s!r}").replace(
        "slow_until=auto", f"slow_until={slow_until_s!r}"
    )
    sim, extra = sim_fleet.parse_backend(text)
    unknown = set(extra) - {"in", "out"}
    if unknown:
        raise ValueError(f"backend spec {text!r}: unknown keys {sorted(unknown)}")
    return Member(sim, float(extra.get("in", 0.0)), float(extra.get("out", 0.0)))


def deployment(member: Member, *, cap: bool, priors: bool) -> dict[str, Any]:
    sim = member.sim
    entry: dict[str, Any] = {
        "backend": member.name,
        "model": sim_fleet.MODEL,
        "price": {"input_per_mtok": member.input_per_mtok, "output_per_mtok": member.output_per_mtok},
        "weight": float(sim.capacity),
    }
    if cap:
        entry["max_concurrency"] = sim.capacity
    if priors:
        entry["priors"] = {"ttft_s": sim.ttft_s, "tokens_per_s": sim.tokens_per_s}
    return entry


def router_config(
    fleet: sim_fleet.FleetHandle, members: Sequence[Member], policy: str, args: argparse.Namespace, *, single: bool
) -> dict[str, Any]:
    return {
        "backends": {
            m.name: {
                "provider": args.provider,
                "base_url": fleet.base_url(m.name),
                "api_key": "sim-fleet-key-0123456789",
            }
            for m in members
        },
        "models": {
            ALIAS: {
                "deployments": [
                    deployment(m, cap=args.caps == "capacity" and not single, priors=not args.no_priors)
                    for m in members
                ],
                "policy": policy,
            }
        },
        "load_probes": {"interval_s": args.probe_interval},
    }


class UniformRandom:
    """The baseline: a uniformly random order, ignoring weights and stats."""

    name = RANDOM

    def rank(self, candidates, stats, *, request, now, rng):  # type: ignore[no-untyped-def]
        ranked = list(candidates)
        rng.shuffle(ranked)
        return ranked


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Call:
    start_s: float
    latency_s: float | None = None
    ttft_s: float | None = None
    backend: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    """Attempts sent that failed (retried on the same deployment or fallen over)."""
    skipped_full: int = 0
    """Deployments passed over, not sent to, because our in-flight count was at `max_concurrency`."""
    error: str | None = None


@dataclass
class Run:
    label: str
    kind: str  # "policy", "baseline" or "single"
    policy: str
    backends: list[str]
    calls: list[Call] = field(default_factory=list)
    wall_s: float = 0.0
    client_cores: float = float("nan")
    fleet_cores: float = float("nan")
    other_cores: float = float("nan")
    fleet_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[Call]:
        return [c for c in self.calls if c.error is None]

    def latencies(self) -> list[float]:
        return sorted(c.latency_s for c in self.ok if c.latency_s is not None)

    def p(self, q: float) -> float:
        return percentile(self.latencies(), q)

    def mean(self) -> float:
        latencies = self.latencies()
        return sum(latencies) / len(latencies) if latencies else float("nan")

    def ttft_p50(self) -> float:
        return percentile(sorted(c.ttft_s for c in self.ok if c.ttft_s is not None), 50)

    def cost_per_request(self, prices: dict[str, Member]) -> float:
        ok = self.ok
        if not ok:
            return float("nan")
        total = sum(prices[c.backend].cost(c.prompt_tokens, c.completion_tokens) for c in ok if c.backend)
        return total / len(ok)

    @property
    def error_rate(self) -> float:
        return sum(c.error is not None for c in self.calls) / max(1, len(self.calls))

    def share(self) -> Counter[str]:
        return Counter(c.backend for c in self.ok if c.backend)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


class CpuMeter:
    """Cores used by this process, the fleet process and everything else over an interval."""

    def __init__(self, fleet_pid: int) -> None:
        self._fleet = f"/proc/{fleet_pid}/stat"
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = os.path.exists("/proc/stat") and os.path.exists(self._fleet)

    def sample(self) -> tuple[float, float, float, float]:
        if not self.available:
            return time.perf_counter(), 0.0, time.process_time(), 0.0
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / self._tick
        with open(self._fleet) as f:
            stat = f.read().rsplit(")", 1)[1].split()
        return time.perf_counter(), busy, time.process_time(), (int(stat[11]) + int(stat[12])) / self._tick


def messages_for(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    user = f"Request {i}: in two or three sentences, what should an engineer know about {topic}? " * 3
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


async def run_once(
    run: Run,
    fleet: sim_fleet.FleetHandle,
    members: Sequence[Member],
    args: argparse.Namespace,
    max_tokens: list[int],
    meter: CpuMeter,
    *,
    quiet: bool = False,
) -> Run:
    from router import AsyncRouter, route_of

    config = router_config(fleet, members, run.policy, args, single=run.kind == "single")
    requests = len(max_tokens)
    stream = not args.no_stream
    time_cap = args.single_max_s if run.kind == "single" else None
    async with AsyncRouter.from_config(config, seed=args.seed) as router:
        create = router.chat.completions.create
        next_index = 0
        calls: list[Call | None] = [None] * requests
        perf = time.perf_counter
        held: list[Any] = []

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                if time_cap is not None and perf() - t0 > time_cap:
                    return
                i = next_index
                next_index += 1
                if args.app_garbage:
                    _leave_garbage(held)
                call = calls[i] = Call(start_s=perf() - t0)
                record = None
                try:
                    if stream:
                        response = await create(
                            model=ALIAS, messages=messages_for(i), max_tokens=max_tokens[i], stream=True
                        )
                        async for _chunk in response:
                            pass
                    else:
                        response = await create(model=ALIAS, messages=messages_for(i), max_tokens=max_tokens[i])
                    call.latency_s = perf() - t0 - call.start_s
                    record = route_of(response)
                except Exception as exc:
                    call.error = type(exc).__name__
                    record = getattr(exc, "route", None)
                    if not quiet and sum(c is not None and c.error is not None for c in calls) <= 3:
                        print(f"  ! {run.label}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                if record is not None:
                    call.backend = record.backend if call.error is None else None
                    call.ttft_s = record.ttft_s
                    call.attempts = len(record.attempts)
                    call.failed_attempts = sum(a.outcome not in ("ok", "at_capacity") for a in record.attempts)
                    call.skipped_full = sum(a.outcome == "at_capacity" for a in record.attempts)
                    if record.usage is not None:
                        call.prompt_tokens = record.usage.prompt_tokens
                        call.completion_tokens = record.usage.completion_tokens

        gc.collect()
        fleet.start(seed=args.seed)
        before = meter.sample()
        t0 = perf()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        after = meter.sample()
        run.wall_s = perf() - t0
    run.calls = [c for c in calls if c is not None]
    run.fleet_stats = fleet.stats()
    wall, busy, client, server = (b - a for a, b in zip(before, after, strict=True))
    if meter.available and wall > 0:
        run.client_cores, run.fleet_cores = client / wall, server / wall
        run.other_cores = max(0.0, busy - client - server) / wall
    return run


# --- analysis --------------------------------------------------------------------------------


@dataclass
class Shift:
    share_before: float
    first_below_s: float | None
    """Seconds after the slow-down until a window of new requests had < 10 % on the slowed backend."""
    stays_below_s: float | None
    """... and from when on every later window did."""
    share_after: float
    timeline: list[tuple[float, float, int]]
    back_on_s: float | None = None
    """Seconds after the recovery until a window had at least half the share before the slow-down."""
    seen_after_recovery_s: float = 0.0
    """How long the run went on after the recovery (a return later than this cannot be seen)."""


def shift_away(
    run: Run, backend: str, slow_at_s: float, recover_at_s: float | None = None, window_s: float = SHIFT_WINDOW_S
) -> Shift:
    """Windows of `window_s` by request start time, anchored at the slow-down (one starts at `slow_at_s`).

    With a recovery at `recover_at_s`, "after" and "stays below" count only the windows before it,
    and `back_on_s` is when the backend got back half the share it had before the slow-down."""
    calls = sorted((c for c in run.ok if c.backend), key=lambda c: c.start_s)
    end_s = math.inf if recover_at_s is None else recover_at_s
    before = [c for c in calls if c.start_s < slow_at_s]
    after = [c for c in calls if slow_at_s <= c.start_s < end_s]

    def share(cs: list[Call]) -> float:
        return sum(c.backend == backend for c in cs) / len(cs) if cs else float("nan")

    timeline: list[tuple[float, float, int]] = []
    if calls:
        k = -math.floor(slow_at_s / window_s)
        while slow_at_s + k * window_s <= calls[-1].start_s:
            t = slow_at_s + k * window_s
            window = [c for c in calls if t <= c.start_s < t + window_s]
            if window:
                timeline.append((t, share(window), len(window)))
            k += 1
    offsets = [(t - slow_at_s, s) for t, s, _ in timeline if slow_at_s - 1e-9 <= t and t + window_s <= end_s + 1e-9]
    first = next((offset for offset, s in offsets if s < SLOW_SHARE), None)
    stays = next((offset for k, (offset, _) in enumerate(offsets) if all(s < SLOW_SHARE for _, s in offsets[k:])), None)
    shift = Shift(share(before), first, stays, share(after), timeline)
    if recover_at_s is not None and calls:
        shift.seen_after_recovery_s = max(0.0, calls[-1].start_s - recover_at_s)
        shift.back_on_s = next(
            (t - recover_at_s for t, s, _ in timeline if t >= recover_at_s - 1e-9 and s >= shift.share_before / 2), None
        )
    return shift


def fmt_ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:,.0f}"


def fmt_share(counts: Counter[str], name: str, total: int) -> str:
    n = counts.get(name, 0)
    return "" if not n else f"{100 * n / total:.1f}%"


def print_run_line(run: Run, prices: dict[str, Member]) -> None:
    share = run.share()
    total = sum(share.values()) or 1
    shares = " ".join(f"{name}={100 * n / total:.0f}%" for name, n in share.most_common())
    print(
        f"  {run.label:<22} {run.wall_s:5.1f}s  ${run.cost_per_request(prices) * 1e3:.4f}/1k req  "
        f"p50 {fmt_ms(run.p(50))} ms  p99 {fmt_ms(run.p(99))} ms  err {100 * run.error_rate:.2f}%  "
        f"cpu client {run.client_cores:.2f} fleet {run.fleet_cores:.2f}  [{shares}]",
        file=sys.stderr,
        flush=True,
    )


def report(
    runs: list[Run], members: Sequence[Member], args: argparse.Namespace, ranks: dict[str, dict[int, float]]
) -> bool:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    prices = {m.name: m for m in members}
    names = [m.name for m in members]
    console.print()
    fleet = Table(title="The simulated fleet (config order)", title_justify="left")
    for col in ("backend", "TTFT ms", "tokens/s", "capacity", "error rate", "slows", "$/M in", "$/M out"):
        fleet.add_column(col, justify="left" if col == "backend" else "right")
    for m in members:
        s = m.sim
        slows = f"x{s.slow_factor:g} at {s.slow_at_s:g}s" if s.slow_at_s is not None and s.slow_factor != 1 else ""
        if slows and s.slow_until_s is not None:
            slows += f" to {s.slow_until_s:g}s"
        err = f"{100 * s.error_rate:g}% ({s.error_status})" if s.error_rate else ""
        fleet.add_row(m.name, f"{s.ttft_s * 1e3:g} ±{100 * s.jitter:g}%", f"{s.tokens_per_s:g}", str(s.capacity),
                      err, slows, f"{m.input_per_mtok:.2f}", f"{m.output_per_mtok:.2f}")  # fmt: skip
    console.print(fleet)

    table = Table(
        title=f"{args.requests} requests at concurrency {args.concurrency} per run, "
        f"{'streamed' if not args.no_stream else 'non-streamed'}, max_tokens 30-60; slow-down at {args.slow_at:g} s",
        title_justify="left",
        caption="calls: * = a single-backend run stopped issuing calls after --single-max-s. cost: from each call's "
        "usage × configured prices, per successful call. latency: end to end (stream read to the end), successful "
        "calls. err: calls that raised. fail/call: attempts sent that failed (retried or fallen over). full/call: "
        "deployments passed over at their max_concurrency. cpu: cores used by the client / the fleet process. "
        "Shares: of successful calls.",
        caption_justify="left",
    )
    cols = [
        "run",
        "calls",
        "$/1k req",
        "p50 ms",
        "p99 ms",
        "TTFT p50",
        "err %",
        "fail/call",
        "full/call",
        "wall s",
        "cpu client",
        "cpu fleet",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    last_of_kind = {r.label for r, nxt in itertools.pairwise(runs) if r.kind != nxt.kind}
    for run in runs:
        n_calls = max(1, len(run.calls))
        table.add_row(
            run.label,
            f"{len(run.calls)}" + ("*" if len(run.calls) < args.requests else ""),
            f"{run.cost_per_request(prices) * 1e3:.4f}",
            fmt_ms(run.p(50)),
            fmt_ms(run.p(99)),
            fmt_ms(run.ttft_p50()),
            f"{100 * run.error_rate:.2f}",
            f"{sum(c.failed_attempts for c in run.calls) / n_calls:.3f}",
            f"{sum(c.skipped_full for c in run.calls) / n_calls:.2f}",
            f"{run.wall_s:.1f}",
            f"{run.client_cores:.2f}",
            f"{run.fleet_cores:.2f}",
            end_section=run.label in last_of_kind,
        )
    singles = [r for r in runs if r.kind == "single"]
    if singles:

        def best(metric: Callable[[Run], float]) -> Run:
            return min(singles, key=lambda r: (math.isnan(metric(r)), metric(r)))

        by_cost = best(lambda r: r.cost_per_request(prices))
        by_p50, by_p99 = best(lambda r: r.p(50)), best(lambda r: r.p(99))
        by_ttft, by_err = best(Run.ttft_p50), best(lambda r: r.error_rate)
        table.add_row(
            "best single (hindsight)",
            "",
            f"{by_cost.cost_per_request(prices) * 1e3:.4f}",
            fmt_ms(by_p50.p(50)),
            fmt_ms(by_p99.p(99)),
            fmt_ms(by_ttft.ttft_p50()),
            f"{100 * by_err.error_rate:.2f}",
            *([""] * (len(cols) - 7)),
        )
        table.add_row(
            "  ... which backend",
            "",
            by_cost.backends[0],
            by_p50.backends[0],
            by_p99.backends[0],
            by_ttft.backends[0],
            by_err.backends[0],
            *([""] * (len(cols) - 7)),
        )
    console.print(table)

    shares = Table(
        title="Share of successful calls per backend, and where the slowest 1 % of calls went",
        title_justify="left",
        caption="tail: the slowest 1 % of successful calls by backend; r = of them with a failed attempt first "
        "(retried/fallen over), s = started after the slow-down.",
        caption_justify="left",
    )
    shares.add_column("run", no_wrap=True)
    for name in names:
        shares.add_column(name, justify="right", no_wrap=True)
    shares.add_column("tail (slowest 1 %)")
    for run in runs:
        share = run.share()
        total = sum(share.values()) or 1
        ok = sorted((c for c in run.ok if c.latency_s is not None), key=lambda c: c.latency_s or 0.0)
        tail = ok[len(ok) - max(1, len(ok) // 100) :] if ok else []
        by_backend: dict[str, list[Call]] = {}
        for c in tail:
            by_backend.setdefault(c.backend or "?", []).append(c)
        tail_text = ", ".join(
            f"{name} {len(cs)} (r{sum(c.failed_attempts > 0 for c in cs)} "
            f"s{sum(c.start_s >= args.slow_at for c in cs)})"
            for name, cs in sorted(by_backend.items(), key=lambda kv: -len(kv[1]))
        )
        shares.add_row(
            run.label, *(fmt_share(share, n, total) for n in names), tail_text, end_section=run.label in last_of_kind
        )
    console.print(shares)

    # the backend that slows down: its share of new requests over time, per run
    slowed = [m for m in members if m.sim.slow_at_s is not None and m.sim.slow_factor != 1]
    shifts: dict[str, Shift] = {}
    recover_at: float | None = None
    if slowed:
        victim = slowed[0]
        at = victim.sim.slow_at_s or 0.0
        recover_at = victim.sim.slow_until_s
        recovers = "" if recover_at is None else f", recovers at {recover_at:g} s"
        timeline = Table(
            title=f"Share of new requests sent to {victim.name} (slows x{victim.sim.slow_factor:g} at {at:g} s"
            f"{recovers}), by request start time, {SHIFT_WINDOW_S:g} s windows",
            title_justify="left",
        )
        timeline.add_column("run")
        timeline.add_column("before", justify="right")
        timeline.add_column("after", justify="right")
        timeline.add_column(f"< {100 * SLOW_SHARE:g}% after", justify="right")
        timeline.add_column("stays <", justify="right")
        timeline.add_column("back on", justify="right")
        timeline.add_column("windows from the slow-down on (% of new requests; | = slow-down, ^ = recovery)")
        for run in runs:
            if run.kind == "single" and victim.name not in run.backends:
                continue
            shift = shifts[run.label] = shift_away(run, victim.name, at, recover_at)
            cells = []
            for t, s, _n in shift.timeline:
                if t < at - 5 * SHIFT_WINDOW_S:
                    continue
                mark = (
                    "|" if abs(t - at) < 1e-9 else "^" if recover_at is not None and abs(t - recover_at) < 1e-9 else ""
                )
                cells.append(mark + f"{100 * s:.0f}")
            timeline.add_row(
                run.label,
                f"{100 * shift.share_before:.0f}%",
                f"{100 * shift.share_after:.0f}%",
                "-" if shift.first_below_s is None else f"{shift.first_below_s:.1f} s",
                "-" if shift.stays_below_s is None else f"{shift.stays_below_s:.1f} s",
                "" if recover_at is None else "-" if shift.back_on_s is None else f"{shift.back_on_s:.1f} s",
                " ".join(cells),
            )
        console.print(timeline)

    if ranks:
        rank_table = Table(
            title="Ranking speed (bench/rank_speed.py: one `rank` call, best of 5)", title_justify="left"
        )
        rank_table.add_column("policy")
        for n in args.rank_sizes:
            rank_table.add_column(f"n={n} µs", justify="right")
            rank_table.add_column("ns/cand", justify="right")
        for name, by_n in ranks.items():
            row = [name]
            for n in args.rank_sizes:
                row += [f"{by_n[n] * 1e6:.2f}", f"{by_n[n] * 1e9 / n:.0f}"]
            rank_table.add_row(*row)
        console.print(rank_table)

    # --- targets ---
    lines = ["", "Targets (measured in this run):"]
    all_met = True
    unmeasured: list[str] = []

    def verdict(label: str, met: bool | None, detail: str) -> None:
        nonlocal all_met
        if met is None:
            lines.append(f"  {label}: not measured ({detail})")
            unmeasured.append(label)
            return
        all_met &= met
        lines.append(f"  {label}: {detail}  {'MET' if met else 'MISSED'}")

    by_label = {r.label: r for r in runs}
    if "cheapest" in by_label and singles:
        cheapest = by_label["cheapest"]
        base = min(singles, key=lambda r: r.cost_per_request(prices))
        ratio = cheapest.cost_per_request(prices) / base.cost_per_request(prices)
        verdict(
            "cheapest cost <= 1.01x the cheapest backend alone",
            ratio <= 1.01,
            f"{ratio:.4f}x (${cheapest.cost_per_request(prices) * 1e3:.4f} vs "
            f"${base.cost_per_request(prices) * 1e3:.4f} per 1k on {base.backends[0]})",
        )
    else:
        verdict("cheapest cost <= 1.01x the cheapest backend alone", None, "needs cheapest and single runs")
    if "fastest" in by_label and singles:
        fastest = by_label["fastest"]
        base = min(singles, key=lambda r: r.p(50))
        ratio = fastest.p(50) / base.p(50)
        verdict(
            "fastest p50 <= 1.1x the fastest backend's own p50",
            ratio <= 1.1,
            f"{ratio:.2f}x ({fmt_ms(fastest.p(50))} vs {fmt_ms(base.p(50))} ms on {base.backends[0]} alone)",
        )
    else:
        verdict("fastest p50 <= 1.1x the fastest backend's own p50", None, "needs fastest and single runs")
    if "fastest" in shifts:
        s = shifts["fastest"]
        detail = (
            f"share before {100 * s.share_before:.0f}%, first {SHIFT_WINDOW_S:g} s window under "
            f"{100 * SLOW_SHARE:g}% at +{s.first_below_s if s.first_below_s is not None else float('nan'):.1f} s, "
            f"under it from then on from +{s.stays_below_s if s.stays_below_s is not None else float('nan'):.1f} s; "
            f"share after {100 * s.share_after:.1f}%"
        )
        if s.share_before < SLOW_SHARE:
            detail += " (it hardly used the backend before: not a real test)"
        met = s.first_below_s is not None and s.first_below_s <= 1.0
        verdict("fastest shifts away from the backend that slows within 1 s", met, detail)
        if recover_at is not None:
            label = "fastest is back on it within 30 s of its recovery (half its share before)"
            if s.back_on_s is None and s.seen_after_recovery_s < 30.0:
                verdict(label, None, f"not back when the run ended {s.seen_after_recovery_s:.1f} s after the recovery: "
                        "use more --requests")  # fmt: skip
            else:
                back = "never" if s.back_on_s is None else f"+{s.back_on_s:.1f} s"
                verdict(label, s.back_on_s is not None and s.back_on_s <= 30.0, f"back on at {back}")
    elif args.scenario == "mixed":
        verdict("fastest shifts away from the backend that slows within 1 s", None, "needs fastest and a slow-down")
    if args.scenario == "spread":
        target_fleet_share(verdict, by_label, members)
    if args.scenario == "one-slot":
        target_one_slot(verdict, by_label, members)
    if "least-loaded" in by_label and RANDOM in by_label:
        ll, rnd = by_label["least-loaded"], by_label[RANDOM]
        ratio = ll.p(99) / rnd.p(99)
        detail = f"{ratio:.2f}x ({fmt_ms(ll.p(99))} vs {fmt_ms(rnd.p(99))} ms)"
        if args.scenario == "mixed":
            verdict("least-loaded p99 <= 0.7x uniform random's", ratio <= 0.7, detail)
        else:  # the 0.7x target was set for the mixed fleet
            lines.append(f"  least-loaded p99 vs uniform random's (no target in this scenario): {detail}")
    elif args.scenario == "mixed":
        verdict("least-loaded p99 <= 0.7x uniform random's", None, "needs least-loaded and the random baseline")
    if ranks:
        small, large = min(args.rank_sizes), max(args.rank_sizes)
        worst = max(ranks, key=lambda name: ranks[name][small])
        verdict(
            f"ranking {small} deployments <= 20 µs (every policy)",
            ranks[worst][small] * 1e6 <= rank_speed.TARGET_US,
            f"slowest {worst} {ranks[worst][small] * 1e6:.2f} µs",
        )
        growth = {name: (by_n[large] / large) / (by_n[small] / small) for name, by_n in ranks.items()}
        worst = max(growth, key=lambda name: growth[name])
        # Linear, give or take the log factor of the sort and timing noise on a shared machine: per-deployment
        # time at most 2x that at the smallest size (quadratic work would show ~100x here).
        verdict(
            f"ranking {large} deployments grows linearly (per-deployment time <= 2x that at n={small})",
            growth[worst] <= 2.0,
            f"per-deployment time at n={large} ÷ at n={small}: "
            + ", ".join(f"{name} {g:.2f}" for name, g in growth.items()),
        )
    busy = [r.label for r in runs if r.client_cores > 0.85]
    if busy:
        lines.append(f"  ! the client used > 0.85 of a core in {', '.join(busy)}: its latencies may include "
                     "waiting for the CPU")  # fmt: skip
    others = [r for r in runs if r.other_cores > 0.2]
    if others:
        lines.append(
            f"  ! other processes used > 0.2 cores (up to {max(r.other_cores for r in others):.2f}) during "
            f"{len(others)} of {len(runs)} runs: the machine is shared, numbers are noisy"
        )
    lines.append(
        f"  all targets met: {'NO' if not all_met else 'yes' if not unmeasured else f'{len(unmeasured)} not measured'}"
    )
    print("\n".join(lines), flush=True)
    return all_met and not unmeasured


def target_fleet_share(verdict: Callable[[str, bool | None, str], None], by_label: dict[str, Run],
                       members: Sequence[Member]) -> None:  # fmt: skip
    """`spread`: fastest sends at least `FLEET_SHARE` of its calls (probes included) to the fastest backend."""
    label = f"fastest sends >= {100 * FLEET_SHARE:g}% of calls to the fastest backend"
    if "fastest" not in by_label:
        verdict(label, None, "needs fastest")
        return
    best = min(members, key=lambda m: m.sim.ttft_s).name
    share = by_label["fastest"].share()
    ratio = share.get(best, 0) / max(1, sum(share.values()))
    shares = ", ".join(f"{name} {100 * n / max(1, sum(share.values())):.1f}%" for name, n in share.most_common())
    verdict(label, ratio >= FLEET_SHARE, f"{100 * ratio:.1f}% on {best} ({shares})")


def target_one_slot(verdict: Callable[[str, bool | None, str], None], by_label: dict[str, Run],
                    members: Sequence[Member]) -> None:  # fmt: skip
    """`one-slot`: fastest's mean latency beats both always-the-fastest-backend and uniform random."""
    best = min(members, key=lambda m: m.sim.ttft_s).name
    label = f"fastest mean latency < both only {best} and uniform random"
    runs = [by_label.get("fastest"), by_label.get(f"only {best}"), by_label.get(RANDOM)]
    if any(r is None for r in runs):
        verdict(label, None, f"needs fastest, the only-{best} run and the random baseline")
        return
    fastest, alone, rnd = (r.mean() for r in runs if r is not None)
    verdict(
        label,
        fastest < alone and fastest < rnd,
        f"{fmt_ms(fastest)} ms vs {fmt_ms(alone)} ms ({fastest / alone:.2f}x) "
        f"and {fmt_ms(rnd)} ms ({fastest / rnd:.2f}x)",
    )


class _Cycle:
    """An object in a reference cycle holding some data, as applications leave them."""

    def __init__(self) -> None:
        self.me = self
        self.data = [list(range(20)) for _ in range(6)]


def _leave_garbage(held: list[Any]) -> None:
    """`--app-garbage`: what a calling application might do per call — leave ten objects in reference
    cycles and keep three (its caches grow), so the collector's passes get longer as the run goes."""
    for _ in range(10):
        _Cycle()
    held.append([_Cycle() for _ in range(3)])


# --- proposed fixes, applied only inside this process ----------------------------------------

PATCHES: dict[str, str] = {
    "least-loaded-latency": "policies/least_loaded.py ranks by expected_duration_s x (outstanding + 1) / capacity "
    "(the expected time to serve this request behind the ones already there, Tower's peak-EWMA P2C cost) "
    "instead of estimates.load = outstanding / capacity, which ignores how long each outstanding request takes",
    "fresh-outstanding": "estimates.outstanding counts our own in-flight requests live and adds only the load the "
    "last server report showed beyond ours at that moment (in_flight + max(0, reported - ours_at_probe)), instead of "
    "max(in_flight, reported), which lets a report up to one probe interval old override the live count",
    "least-loaded-guard": "policies/least_loaded.py keeps its load order, but a deployment whose "
    "expected_duration_s is more than 2x the fastest open deployment's goes after all the others (a latency guard: "
    "balance load among the deployments that are not much slower; the slow one still takes overflow)",
}


def _patch_least_loaded_guard() -> None:
    import policies.least_loaded as ll
    from policies.estimates import expected_duration_s

    original = ll.LeastLoaded.rank

    def rank(self, candidates, stats, *, request, now, rng):  # type: ignore[no-untyped-def]
        ranked = original(self, candidates, stats, request=request, now=now, rng=rng)
        get = stats.get
        durations = {c.id: expected_duration_s(c, get(c.id), request) for c in ranked}
        best = min(durations.values(), default=0.0)
        return sorted(ranked, key=lambda c: durations[c.id] > 2.0 * best)  # stable: load order kept within

    ll.LeastLoaded.rank = rank  # type: ignore[method-assign]


def _patch_least_loaded_latency() -> None:
    import policies.least_loaded as ll
    from policies.estimates import at_capacity, capacity, expected_duration_s, outstanding

    def rank(self, candidates, stats, *, request, now, rng):  # type: ignore[no-untyped-def]
        get = stats.get
        open_: list[tuple[float, int, int, Any, float]] = []
        full: list[tuple[float, int, int, Any]] = []
        for i, c in enumerate(candidates):
            s = get(c.id)
            slots = capacity(c, s) or 1
            if (s is not None and s.probe_ok is False) or slots <= 0:
                cost, step = math.inf, 0.0
            else:
                per_slot = expected_duration_s(c, s, request) / slots
                cost, step = per_slot * (outstanding(s) + 1), per_slot
            if at_capacity(c, s):
                full.append((cost, c.order, i, c))
            else:
                open_.append((cost, c.order, i, c, step))
        open_.sort()
        full.sort()
        ranked = [t[3] for t in open_]
        if len(open_) >= 2:  # power of two choices among the near-equal, as the original
            best = open_[0][0]
            near = [j for j, t in enumerate(open_) if t[0] <= best * (1.0 + ll.NEAR_RELATIVE) or t[0] - t[4] <= best]
            n = len(near)
            if n >= 2:
                a = int(rng.random() * n)
                b = int(rng.random() * (n - 1))
                if b >= a:
                    b += 1
                first = near[a] if open_[near[a]][0] <= open_[near[b]][0] else near[b]
                if first:
                    ranked.insert(0, ranked.pop(first))
        ranked.extend(t[3] for t in full)
        return ranked

    ll.LeastLoaded.rank = rank  # type: ignore[method-assign]


def _patch_fresh_outstanding() -> None:
    from dataclasses import replace

    from router.path.stats import MemoryStats

    ours_at_probe: dict[str, int] = {}
    observe, snapshot = MemoryStats.observe_server_load, MemoryStats.snapshot

    def observe_server_load(self, backend, load):  # type: ignore[no-untyped-def]
        for candidate_id, d in self._deployments.items():
            if candidate_id.split("/", 1)[0] == backend:
                ours_at_probe[candidate_id] = d.in_flight
        observe(self, backend, load)

    def fresh_snapshot(self, candidate_id, now):  # type: ignore[no-untyped-def]
        found = snapshot(self, candidate_id, now)
        if found is None or found.server_running is None:
            return found
        reported = found.server_running + (found.server_waiting or 0)
        foreign = max(0, reported - ours_at_probe.get(candidate_id, 0))
        return replace(found, server_running=found.in_flight + foreign, server_waiting=0)

    MemoryStats.observe_server_load = observe_server_load  # type: ignore[method-assign]
    MemoryStats.snapshot = fresh_snapshot  # type: ignore[method-assign]


def apply_patches(names: Sequence[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES) or 'none'}")
        print(f"*** MONKEYPATCHED for this run only: {name}: {PATCHES[name]}", flush=True)
        globals()[f"_patch_{name.replace('-', '_')}"]()


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--scenario", default="mixed", choices=sorted(SCENARIOS),
                        help="; ".join(f"{name}: {sc.about}" for name, sc in SCENARIOS.items()))  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=None, help="concurrent callers (default: the scenario's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests per run")
    parser.add_argument(
        "--policies",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        default=list(POLICIES),
        help=f"comma-separated subset of: {', '.join(POLICIES)}",
    )
    parser.add_argument(
        "--baselines",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        default=["random", "single"],
        help="random,single (default both; '' for none)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=None,
        help="replace the default fleet: name:ttft=S,tps=N,cap=N,err=P,status=503|500,jitter=R,"
        "slow_at=S|auto,slow_x=F,in=USD/Mtok,out=USD/Mtok (repeatable, config order)",
    )
    parser.add_argument(
        "--slow-at",
        type=float,
        default=None,
        help="seconds after the start for slow_at=auto (default 12 s x requests/2000, at least 2)",
    )
    parser.add_argument(
        "--single-max-s",
        type=float,
        default=60.0,
        help="a single-backend run issues no new call after this many seconds (default 60)",
    )
    parser.add_argument("--no-stream", action="store_true", help="non-streamed calls (default: the scenario's)")
    parser.add_argument(
        "--app-garbage",
        action="store_true",
        help="the caller leaves reference cycles per call (garbage-collection pauses land in every call in flight)",
    )
    parser.add_argument(
        "--recover-after", type=float, default=5.0, help="seconds the slow-down lasts, for slow_until=auto (default 5)"
    )
    parser.add_argument(
        "--provider",
        default="vllm",
        choices=["vllm", "openai"],
        help="provider kind of every backend (vllm: /metrics load is polled)",
    )
    parser.add_argument("--probe-interval", type=float, default=2.0, help="load probe interval (default 2 s)")
    parser.add_argument(
        "--caps",
        default="capacity",
        choices=["capacity", "none"],
        help="max_concurrency of the policy runs' deployments (default: the capacity)",
    )
    parser.add_argument("--no-priors", action="store_true", help="no configured priors (policies use defaults)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rank-sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rank-budget-s", type=float, default=0.3)
    parser.add_argument("--no-rank", action="store_true", help="skip the ranking-speed measurement")
    parser.add_argument("--patch", action="append", default=[], help="apply a proposed fix (see PATCHES)")
    parser.add_argument("--json", type=Path, default=None, help="also write per-run results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.quick and "--requests" not in (argv if argv is not None else sys.argv[1:]):
        args.requests = 300
    for name in args.policies:
        if name not in POLICIES:
            parser.error(f"unknown policy {name!r}")
    if args.slow_at is None:
        args.slow_at = max(2.0, 12.0 * args.requests / 2000)
    scenario = SCENARIOS[args.scenario]
    args.backend = args.backend or scenario.fleet
    args.concurrency = args.concurrency or scenario.concurrency
    args.no_stream = args.no_stream or not scenario.stream
    return args


async def run_all(fleet: sim_fleet.FleetHandle, members: list[Member], args: argparse.Namespace) -> list[Run]:
    rng = random.Random(args.seed)
    max_tokens = [rng.randint(30, 60) for _ in range(args.requests)]
    meter = CpuMeter(fleet.pid)
    plan: list[Run] = [Run(p, "policy", p, [m.name for m in members]) for p in args.policies]
    if "random" in args.baselines:
        plan.append(Run(RANDOM, "baseline", RANDOM, [m.name for m in members]))
    # warm-up: code paths and imports, not measured (the fleet restarts before each run)
    await run_once(Run("warm-up", "policy", "ordered", []), fleet, members, args, max_tokens[:64], meter, quiet=True)
    runs = []
    for run in plan:
        runs.append(await run_once(run, fleet, members, args, max_tokens, meter))
        print_run_line(runs[-1], {m.name: m for m in members})
    if "single" in args.baselines:
        for m in members:
            run = Run(f"only {m.name}", "single", "ordered", [m.name])
            runs.append(await run_once(run, fleet, [m], args, max_tokens, meter))
            print_run_line(runs[-1], {m.name: m for m in members})
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    apply_patches(args.patch)
    import policies

    policies.register(RANDOM, UniformRandom)
    members = [parse_member(text, args.slow_at, args.slow_at + args.recover_after) for text in args.backend]
    import httpx2
    import openai

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
          f"openai {openai.__version__}, httpx2 {httpx2.__version__}; the fleet runs in its own process")  # fmt: skip
    print(
        f"{args.requests} requests x concurrency {args.concurrency} per run; provider {args.provider}; "
        f"caps {args.caps}; priors {'off' if args.no_priors else 'nominal'}; seed {args.seed}",
        flush=True,
    )
    with sim_fleet.fleet_process([m.sim for m in members], seed=args.seed) as fleet:
        runs = asyncio.run(run_all(fleet, members, args))
    ranks: dict[str, dict[int, float]] = {}
    if not args.no_rank:
        gc.collect()
        for name in rank_speed.NAMES:
            ranks[name] = {n: rank_speed.time_per_call(name, n, args.rank_budget_s) for n in args.rank_sizes}
    met = report(runs, members, args, ranks)
    if args.json is not None:
        prices = {m.name: m for m in members}
        args.json.write_text(json.dumps({
            "requests": args.requests, "concurrency": args.concurrency, "slow_at_s": args.slow_at,
            "patches": args.patch,
            "runs": [{
                "label": r.label, "kind": r.kind, "policy": r.policy, "wall_s": r.wall_s,
                "cost_per_request_usd": r.cost_per_request(prices), "p50_s": r.p(50), "p99_s": r.p(99),
                "ttft_p50_s": r.ttft_p50(), "error_rate": r.error_rate, "share": dict(r.share()),
                "client_cores": r.client_cores, "fleet_cores": r.fleet_cores, "fleet": r.fleet_stats,
                "calls": [[c.start_s, c.latency_s, c.backend, c.error] for c in r.calls],
            } for r in runs],
            "rank_s": ranks, "targets_met": met,
        }, indent=1))  # fmt: skip
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
