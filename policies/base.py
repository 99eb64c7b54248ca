"""The policy protocol and the data it ranks: candidates, a request profile, live stats.

A policy does no I/O and reads no clock of its own (`now` is passed in, on the same clock as
the times in the stats); given the same inputs and a seeded `random.Random` it returns the
same order. Users write their own by implementing `rank` and registering it (see
`examples/custom_policy.py`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, as in effect for this request (off-peak windows already applied)."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    """The price of prompt tokens served from the provider's prompt cache; None: same as input."""
    per_hour: float | None = None
    """Self-hosted: the machine's cost per hour, charged for the time a request occupies it."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment that may serve a request: a model id on a backend, with what config says of it."""

    id: str
    """Stable key, `backend/model`."""
    backend: str
    provider: str
    model: str
    order: int
    """Position in the config (after per-call `prefer` hints); `ordered` follows it."""
    weight: float = 1.0
    price: Price | None = None
    max_concurrency: int | None = None
    """Outstanding requests this deployment may have at once; None: unlimited."""
    prior_ttft_s: float | None = None
    """Expected time to first token before any sample (config); None: the policy's default."""
    prior_tokens_per_s: float | None = None
    """Expected decode speed before any sample (config); None: the policy's default."""


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """What a policy needs to know of the request: its size and shape."""

    prompt_tokens: int
    """Estimated prompt tokens (tools and schemas included)."""
    output_tokens: int
    """Expected completion tokens (from `max_tokens`, capped by a typical answer length)."""
    stream: bool = False
    cached_prompt_tokens: int = 0
    """Prompt tokens a provider's prompt cache is expected to serve (priced at the cached rate)."""


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    """What the router has observed of one deployment, as of `now`."""

    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    error_rate: float = 0.0
    """Share of recent attempts that failed (a decaying window)."""
    ttft_s: float | None = None
    """Time to first token (streams), peak-EWMA: jumps up on a slow sample, decays back slowly."""
    latency_s: float | None = None
    """Whole-response time of non-streamed calls, peak-EWMA."""
    tokens_per_s: float | None = None
    """Decode speed after the first token (streams), EWMA."""
    last_used_at: float | None = None
    """When an attempt last started, on the router's clock."""
    server_running: int | None = None
    """Requests the server reports running (vLLM `num_requests_running`, llama.cpp busy slots)."""
    server_waiting: int | None = None
    """Requests the server reports queued (vLLM `num_requests_waiting`, llama.cpp deferred)."""
    server_slots: int | None = None
    """Parallel capacity the server reports (llama.cpp `total_slots`)."""
    kv_cache_usage: float | None = None
    """vLLM `kv_cache_usage_perc`, 0–1."""
    probe_ok: bool | None = None
    """Whether the last load probe answered; None when the backend is not probed."""
    limited_until: float | None = None
    """Rate-limit headroom is exhausted until this instant (router's clock)."""
    cached_share: float = 0.0
    """Share of prompt tokens this deployment recently served from its prompt cache (0–1)."""
    remaining_requests: float | None = None
    """Requests left in the tightest rate-limit window the provider last reported, until its reset."""
    remaining_tokens: float | None = None
    """Tokens left in the tightest rate-limit window the provider last reported, until its reset."""


class StatsView(Protocol):
    """Read-only access to live stats by candidate id."""

    def get(self, candidate_id: str) -> DeploymentStats | None: ...


class NoStats:
    """A stats view that has seen nothing yet."""

    def get(self, candidate_id: str) -> DeploymentStats | None:
        return None


@runtime_checkable
class Policy(Protocol):
    """Orders candidates, best first. Drops none: eligibility is decided before ranking."""

    name: str

    def rank(
        self,
        candidates: Sequence[Candidate],
        stats: StatsView,
        *,
        request: RequestProfile,
        now: float,
        rng: random.Random,
    ) -> list[Candidate]: ...
