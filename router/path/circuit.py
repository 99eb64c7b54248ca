"""Circuit breaking per deployment: stop sending to what is failing, probe it, let it back in.

Closed → open on `failures` consecutive failures, or when the error rate over the last
`window_s` reaches `error_rate` (with at least `min_requests` in the window). While open the
deployment is skipped. After the cooldown one probe request at a time is let through
(half-open): success closes the circuit, failure re-opens it with a doubled cooldown, capped at
`max_cooldown_s` (a few seconds by default, so a recovered deployment is found again soon even
when calls are rare) and shortened by a random share up to `jitter` (so processes don't probe in
step). Only the probe's own outcome decides: a request sent before the circuit opened that ends
while it is open counts for the error rate but neither re-opens nor closes it. A self-hosted
server that answers a load probe again after failing to is evidence of health: its circuit
closes on probation (the next health failure re-opens it as a failed probe would).
A 429 with a reset time opens it until that time (then it closes without a probe: the provider
said when to come back); of two deadlines the later always wins.
Only failures that say something about the deployment's health count; a bad request doesn't.
Settings are per deployment (`configure`): top level ← backend ← alias, field by field.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

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


class Admission(IntEnum):
    """`Circuits.admit`'s answer: false when refused; `PROBE` when this request decides a half-open circuit."""

    REFUSED = 0
    ADMITTED = 1
    PROBE = 2


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
    probation: bool = False
    """Closed on a load probe's word, not a request's: the next health failure re-opens it."""
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    """(time, healthy) of the attempts within the window, oldest first."""
    failed_in_window: int = 0
    """How many of `outcomes` are failures (kept as they come and go: the rate is O(1) at any rate of calls)."""
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

    def __init__(self, config: CircuitConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.config = config or CircuitConfig()
        """The settings of deployments that have none of their own (see `configure`)."""
        self._settings: dict[str, CircuitConfig] = {}
        self._rng = rng or random.Random()
        self._breakers: dict[str, _Breaker] = {}
        self.on_open: Callable[[str, float, str], None] | None = None
        """Told of every opening (candidate id, wall-clock end, why): shared state publishes it."""
        self.on_close: Callable[[str], None] | None = None
        """Told when a load probe closes a circuit before its cooldown ends: shared state withdraws the opening."""
        self.on_change: Callable[[str, CircuitState, CircuitState, str], None] | None = None
        """Told of every state change (candidate id, previous, new, why): telemetry and hooks."""

    def configure(self, default: CircuitConfig, per_deployment: Mapping[str, CircuitConfig]) -> None:
        """Use these settings from now on (at start and on each reload); state carries over."""
        self.config = default
        self._settings = dict(per_deployment)

    def settings(self, candidate_id: str) -> CircuitConfig:
        """The circuit settings in force for one deployment."""
        return self._settings.get(candidate_id, self.config)

    def _changed(self, candidate_id: str, previous: CircuitState, state: CircuitState, why: str) -> None:
        if self.on_change is not None and previous is not state:
            self.on_change(candidate_id, previous, state, why)

    def _get(self, candidate_id: str) -> _Breaker:
        breaker = self._breakers.get(candidate_id)
        if breaker is None:
            breaker = self._breakers[candidate_id] = _Breaker(cooldown_s=self.settings(candidate_id).cooldown_s)
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

    def admit(self, candidate_id: str, now: float) -> Admission:
        """Take the right to send one request now; a cooled-down open circuit admits one probe."""
        breaker = self._breakers.get(candidate_id)
        if breaker is None or breaker.state is CircuitState.CLOSED:
            return Admission.ADMITTED
        if breaker.state is CircuitState.OPEN and now < breaker.open_until:
            return Admission.REFUSED
        if breaker.state is CircuitState.OPEN and breaker.opened_by.startswith("rate-limited"):
            # the provider said when to come back, and that time has come: no probe needed
            breaker.state = CircuitState.CLOSED
            self._changed(candidate_id, CircuitState.OPEN, breaker.state, "rate-limit reset passed")
            return Admission.ADMITTED
        if breaker.probing:
            return Admission.REFUSED
        previous, breaker.state = breaker.state, CircuitState.HALF_OPEN
        breaker.probing = True
        self._changed(candidate_id, previous, breaker.state, "cooldown over: one probe request let through")
        return Admission.PROBE

    def record(
        self,
        candidate_id: str,
        now: float,
        *,
        failure: FailureKind | None,
        message: str = "",
        retry_after: float | None = None,
        probe: bool = False,
    ) -> None:
        """The outcome of an admitted request (failure None: the deployment answered); `probe`: it
        was admitted as the probe (`Admission.PROBE`), whose outcome alone closes or re-opens."""
        settings = self.settings(candidate_id)
        breaker = self._get(candidate_id)
        if probe:
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
        self._remember(breaker, now, healthy, settings.window_s)
        if healthy:
            breaker.consecutive = 0
            breaker.probation = False
            if probe:
                previous, breaker.state = breaker.state, CircuitState.CLOSED
                breaker.cooldown_s = settings.cooldown_s
                self._changed(candidate_id, previous, breaker.state, "probe succeeded")
            return
        breaker.consecutive += 1
        breaker.last_errors.append(message or str(failure))
        if probe or breaker.probation:
            why = "probe failed" if probe else "failed after a load probe closed it"
            breaker.probation = False
            cap = max(settings.max_cooldown_s, settings.cooldown_s)
            breaker.cooldown_s = min(cap, breaker.cooldown_s * 2)
        elif breaker.state is not CircuitState.CLOSED:
            return  # sent before it opened: the probe decides, not a late failure
        elif breaker.consecutive >= settings.failures:
            why = f"{breaker.consecutive} failures in a row"
        else:
            rate, count = self._rate(breaker, now, settings.window_s)
            if count < settings.min_requests or rate < settings.error_rate:
                return
            why = f"{rate:.0%} of {count} recent requests failed"
        self._open(breaker, now, until=now + self._cooldown(breaker, settings), why=why, candidate_id=candidate_id)

    def _cooldown(self, breaker: _Breaker, settings: CircuitConfig) -> float:
        """This opening's length: the breaker's cooldown, shortened by a random share up to `jitter`."""
        return breaker.cooldown_s * (1.0 - settings.jitter * self._rng.random())

    def release(self, candidate_id: str, *, probe: bool = False) -> None:
        """An admitted request ended without a verdict (cancelled): a probe frees the probe slot."""
        breaker = self._breakers.get(candidate_id)
        if breaker is not None and probe:
            breaker.probing = False

    def server_answered(self, candidate_id: str, now: float) -> bool:
        """Its server answers a load probe again after failing to: end a health opening now, on
        probation, so no caller pays for the probe. True if the circuit closed."""
        breaker = self._breakers.get(candidate_id)
        if breaker is None or breaker.state is CircuitState.CLOSED or breaker.probing:
            return False
        if self.rate_limited_for(candidate_id, now) is not None:
            return False  # the provider's own reset stands
        previous, breaker.state = breaker.state, CircuitState.CLOSED
        breaker.probation, breaker.consecutive, breaker.open_until = True, 0, 0.0
        self._changed(candidate_id, previous, breaker.state, "its server answers load probes again")
        if self.on_close is not None:
            self.on_close(candidate_id)
        return True

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

    def _remember(self, breaker: _Breaker, now: float, healthy: bool, window_s: float) -> None:
        breaker.outcomes.append((now, healthy))
        if not healthy:
            breaker.failed_in_window += 1
        self._forget_before(breaker, now - window_s)

    @staticmethod
    def _forget_before(breaker: _Breaker, horizon: float) -> None:
        outcomes = breaker.outcomes
        while outcomes and outcomes[0][0] < horizon:
            if not outcomes.popleft()[1]:
                breaker.failed_in_window -= 1

    def _rate(self, breaker: _Breaker, now: float, window_s: float) -> tuple[float, int]:
        """The failure rate and the attempt count within the window."""
        self._forget_before(breaker, now - window_s)
        count = len(breaker.outcomes)
        if not count:
            return 0.0, 0
        return breaker.failed_in_window / count, count

    def view(self, candidate_id: str, now: float) -> CircuitView:
        """The circuit's state for health reports."""
        breaker = self._breakers.get(candidate_id) or _Breaker()
        state = breaker.state
        remaining = max(0.0, breaker.open_until - now) if state is CircuitState.OPEN else 0.0
        rate, _ = self._rate(breaker, now, self.settings(candidate_id).window_s)
        return CircuitView(state, remaining, breaker.consecutive, rate, tuple(breaker.last_errors), breaker.opened_by)
