"""The policy protocol: rank eligible candidates from a read-only view of live stats.

A policy does no I/O and reads no clock of its own (`now` is passed in); given the same
inputs and a seeded `random.Random` it returns the same order. Users write their own by
implementing `rank` and registering the class (see `examples/custom_policy.py`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment that may serve a request: a model id on a backend."""

    id: str
    """Stable key, `backend/model`."""
    backend: str
    provider: str
    model: str
    order: int
    """Position in the config (after per-call `prefer` hints); `ordered` follows it."""
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    """What the router has observed of one deployment, as policies see it."""

    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None


class StatsView(Protocol):
    """Read-only access to live stats by candidate id."""

    def get(self, candidate_id: str) -> DeploymentStats | None: ...


class NoStats:
    """A stats view that has seen nothing yet."""

    def get(self, candidate_id: str) -> DeploymentStats | None:
        return None


@runtime_checkable
class Policy(Protocol):
    """Orders candidates, best first. May drop none: eligibility is decided before ranking."""

    name: str

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]: ...


StatsMapping = Mapping[str, DeploymentStats]
