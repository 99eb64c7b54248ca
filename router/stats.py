"""Live per-deployment stats, fed by every attempt and read by policies.

An in-memory store for one process; the shared (Redis) store implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies import DeploymentStats

_EWMA_WEIGHT = 0.2


@dataclass(slots=True)
class _Counters:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None


def _blend(old: float | None, sample: float) -> float:
    return sample if old is None else old + _EWMA_WEIGHT * (sample - old)


class MemoryStats:
    """Process-local stats; cheap enough to update on every attempt."""

    def __init__(self) -> None:
        self._by_id: dict[str, _Counters] = {}

    def begin(self, candidate_id: str) -> None:
        """An attempt started: one more in flight."""
        counters = self._by_id.setdefault(candidate_id, _Counters())
        counters.in_flight += 1

    def end(self, candidate_id: str, *, ok: bool, seconds: float, ttft_s: float | None = None) -> None:
        """An attempt ended; fold its outcome and timings into the estimates."""
        counters = self._by_id.setdefault(candidate_id, _Counters())
        counters.in_flight = max(0, counters.in_flight - 1)
        counters.requests += 1
        if ok:
            counters.latency_s = _blend(counters.latency_s, seconds)
            if ttft_s is not None:
                counters.ttft_s = _blend(counters.ttft_s, ttft_s)
        else:
            counters.failures += 1

    def get(self, candidate_id: str) -> DeploymentStats | None:
        """A read-only snapshot for policies."""
        c = self._by_id.get(candidate_id)
        if c is None:
            return None
        return DeploymentStats(c.in_flight, c.requests, c.failures, c.latency_s, c.ttft_s)
