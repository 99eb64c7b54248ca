"""Circuit breaking per deployment: stop sending to what is failing, probe it, let it back in.

Closed → open on `failures` consecutive failures, or when the error rate over the last
`window_s` reaches `error_rate` (with at least `min_requests` in the window). While open the
deployment is skipped. After the cooldown one probe request at a time is let through
(half-open): success closes the circuit, failure re-opens it with a doubled cooldown (capped).
A 429 with a reset time opens it until that time; of two deadlines the later always wins.
Only failures that say something about the deployment's health count; a bad request doesn't.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from providers import FailureKind
from router.config import CircuitConfig

HEALTH_FAILURES = frozenset(
    {
        FailureKind.OVERLOADED,
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
        FailureKind.SERVER_ERROR,
        FailureKind.STREAM_BROKEN,
        FailureKind.QUOTA,
        FailureKind.AUTH,
    }
)
"""Failure kinds that count against a deployment's circuit (rate limits open it by their reset)."""


class CircuitState(StrEnum):
    """Where a deployment's circuit stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Breaker:
    state: CircuitState = CircuitState.CLOSED
    consecutive: int = 0
    open_until: float = 0.0
    cooldown_s: float = 0.0
    probing: bool = False
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    opened_by: str = ""


@dataclass(frozen=True, slots=True)
class CircuitView:
    """One deployment's circuit, as `router.health()` shows it."""

    state: CircuitState
    cooldown_remaining_s: float
    consecutive_failures: int
    recent_error_rate: float
    recent_errors: tuple[str, ...]
    opened_by: str


class Circuits:
    """Every deployment's breaker, keyed by candidate id. Times are on the caller's clock."""

    def __init__(self, config: CircuitConfig | None = None) -> None:
        self.config = config or CircuitConfig()
        self._breakers: dict[str, _Breaker] = {}
        self.on_open: Callable[[str, float, str], None] | None = None
        """Told of every opening (candidate id, wall-clock end, why): shared state publishes it."""
        self.on_change: Callable[[str, CircuitState, CircuitState, str], None] | None = None
        """Told of every state change (candidate id, previous, new, why): telemetry and hooks."""

    def _changed(self, candidate_id: str, previous: CircuitState, state: CircuitState, why: str) -> None:
        if self.on_change is not None and previous is not state:
            self.on_change(candidate_id, previous, state, why)

    def _get(self, candidate_id: str) -> _Breaker:
        breaker = self._breakers.get(candidate_id)
        if breaker is None:
            breaker = self._breakers[candidate_id] = _Breaker(cooldown_s=self.config.cooldown_s)
        return breaker

    def blocked(self, candidate_id: str, now: float) -> str | None:
        """Why the deployment can't be tried now (for ranking), or None if it may be."""
        breaker = self._breakers.get(candidate_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return None
        if breaker.state is CircuitState.OPEN and now < breaker.open_until:
            return f"circuit open for {breaker.open_until - now:.1f}s more ({breaker.opened_by})"
        if breaker.probing:
            return "circuit half-open: a probe request is in flight"
        return None

    def rate_limited_for(self, candidate_id: str, now: float) -> float | None:
        """Seconds left when the circuit is open because the provider asked us to wait (a 429)."""
        breaker = self._breakers.get(candidate_id)
        if breaker is None or breaker.state is not CircuitState.OPEN or now >= breaker.open_until:
            return None
        return breaker.open_until - now if breaker.opened_by.startswith("rate-limited") else None

    def admit(self, candidate_id: str, now: float) -> bool:
        """Take the right to send one request now; a cooled-down open circuit admits one probe."""
        breaker = self._breakers.get(candidate_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return True
        if breaker.state is CircuitState.OPEN and now < breaker.open_until:
            return False
        if breaker.probing:
            return False
        previous, breaker.state = breaker.state, CircuitState.HALF_OPEN
        breaker.probing = True
        self._changed(candidate_id, previous, breaker.state, "cooldown over: one probe request let through")
        return True

    def record(
        self,
        candidate_id: str,
        now: float,
        *,
        failure: FailureKind | None,
        message: str = "",
        retry_after: float | None = None,
    ) -> None:
        """The outcome of an admitted request (failure None: the deployment answered)."""
        breaker = self._get(candidate_id)
        probe = breaker.probing
        breaker.probing = False
        if failure is FailureKind.RATE_LIMITED and retry_after is not None and retry_after > 0:
            self._open(
                breaker,
                now,
                until=now + retry_after,
                why=f"rate-limited for {retry_after:g}s",
                candidate_id=candidate_id,
            )
            return
        healthy = failure is None or failure not in HEALTH_FAILURES
        self._remember(breaker, now, healthy)
        if healthy:
            breaker.consecutive = 0
            if probe or breaker.state is CircuitState.HALF_OPEN:
                previous, breaker.state = breaker.state, CircuitState.CLOSED
                breaker.cooldown_s = self.config.cooldown_s
                self._changed(candidate_id, previous, breaker.state, "probe succeeded")
            return
        breaker.consecutive += 1
        breaker.last_errors.append(message or str(failure))
        if probe or breaker.state is CircuitState.HALF_OPEN:
            breaker.cooldown_s = min(self.config.max_cooldown_s, breaker.cooldown_s * 2)
            self._open(breaker, now, until=now + breaker.cooldown_s, why="probe failed", candidate_id=candidate_id)
        elif breaker.consecutive >= self.config.failures:
            self._open(
                breaker,
                now,
                until=now + breaker.cooldown_s,
                why=f"{breaker.consecutive} failures in a row",
                candidate_id=candidate_id,
            )
        else:
            rate, count = self._rate(breaker, now)
            if count >= self.config.min_requests and rate >= self.config.error_rate:
                self._open(
                    breaker,
                    now,
                    until=now + breaker.cooldown_s,
                    why=f"{rate:.0%} of {count} recent requests failed",
                    candidate_id=candidate_id,
                )

    def release(self, candidate_id: str) -> None:
        """An admitted request ended without a verdict (cancelled): free the probe slot."""
        breaker = self._breakers.get(candidate_id)
        if breaker is not None:
            breaker.probing = False

    def _open(self, breaker: _Breaker, now: float, *, until: float, why: str, candidate_id: str = "") -> None:
        if breaker.state is CircuitState.OPEN and breaker.open_until >= until:
            return  # the later deadline wins
        previous, breaker.state = breaker.state, CircuitState.OPEN
        breaker.open_until = max(until, breaker.open_until)
        breaker.opened_by = why
        self._changed(candidate_id, previous, breaker.state, why)
        if self.on_open is not None and candidate_id:
            self.on_open(candidate_id, time.time() + (breaker.open_until - now), why)

    def open_remotely(self, candidate_id: str, until: float, why: str) -> None:
        """Another process opened this circuit until `until` (this process's clock)."""
        breaker = self._get(candidate_id)
        if breaker.state is CircuitState.OPEN and breaker.open_until >= until:
            return
        if breaker.probing:
            return  # our own probe decides
        previous, breaker.state = breaker.state, CircuitState.OPEN
        breaker.open_until = until
        breaker.opened_by = why
        self._changed(candidate_id, previous, breaker.state, f"opened by another process: {why}")

    def _remember(self, breaker: _Breaker, now: float, healthy: bool) -> None:
        outcomes = breaker.outcomes
        outcomes.append((now, healthy))
        horizon = now - self.config.window_s
        while outcomes and outcomes[0][0] < horizon:
            outcomes.popleft()

    def _rate(self, breaker: _Breaker, now: float) -> tuple[float, int]:
        horizon = now - self.config.window_s
        recent = [ok for t, ok in breaker.outcomes if t >= horizon]
        if not recent:
            return 0.0, 0
        return recent.count(False) / len(recent), len(recent)

    def view(self, candidate_id: str, now: float) -> CircuitView:
        """The circuit's state for health reports."""
        breaker = self._breakers.get(candidate_id) or _Breaker(cooldown_s=self.config.cooldown_s)
        state = breaker.state
        remaining = max(0.0, breaker.open_until - now) if state is CircuitState.OPEN else 0.0
        rate, _ = self._rate(breaker, now)
        return CircuitView(state, remaining, breaker.consecutive, rate, tuple(breaker.last_errors), breaker.opened_by)
