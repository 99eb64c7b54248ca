"""README "Circuit breaking", step by step on the caller's clock: what opens a circuit and for how
long, the probe, the later of two deadlines, rate-limit openings, openings from other processes,
and the state changes hooks and shared state are told of."""

from __future__ import annotations

import time

import pytest

from providers import FailureKind
from router.config import CircuitConfig
from router.path.circuit import Admission, Circuits, CircuitState

BAD = FailureKind.SERVER_ERROR
OPEN, CLOSED, HALF = CircuitState.OPEN, CircuitState.CLOSED, CircuitState.HALF_OPEN


def watched(**config: float) -> tuple[Circuits, list[tuple[str, str, str, str]], list[tuple[str, float, str]]]:
    """Circuits with these settings (cooldowns exact: no jitter unless asked) and what they tell."""
    config.setdefault("jitter", 0.0)
    circuits = Circuits(CircuitConfig(**config))  # type: ignore[arg-type]
    changes: list[tuple[str, str, str, str]] = []
    openings: list[tuple[str, float, str]] = []
    circuits.on_change = lambda cid, old, new, why: changes.append((cid, old.value, new.value, why))
    circuits.on_open = lambda cid, until, why: openings.append((cid, until, why))
    return circuits, changes, openings


def test_every_state_change_is_told_with_its_reason() -> None:
    """closed → open (failures in a row) → half-open (cooldown over) → open (probe failed, cooldown ×2)
    → half-open → closed (probe succeeded): each change reported once, with why."""
    circuits, changes, openings = watched(failures=2, cooldown_s=10, max_cooldown_s=100)
    circuits.record("a", 0, failure=BAD)
    circuits.record("a", 1, failure=BAD)
    assert circuits.admit("a", 11) is Admission.PROBE
    circuits.record("a", 11, failure=BAD, message="still down", probe=True)
    assert not circuits.admit("a", 30) and circuits.admit("a", 31) is Admission.PROBE
    circuits.record("a", 31, failure=None, probe=True)
    assert changes == [
        ("a", "closed", "open", "2 failures in a row"),
        ("a", "open", "half_open", "cooldown over: one probe request let through"),
        ("a", "half_open", "open", "probe failed"),
        ("a", "open", "half_open", "cooldown over: one probe request let through"),
        ("a", "half_open", "closed", "probe succeeded"),
    ]
    assert [(cid, why) for cid, _, why in openings] == [("a", "2 failures in a row"), ("a", "probe failed")]
    # shared state is told the wall-clock end of each opening
    assert abs(openings[0][1] - (time.time() + 10)) < 1 and abs(openings[1][1] - (time.time() + 20)) < 1
    # after a success the cooldown is back to the configured one
    circuits.record("a", 40, failure=BAD)
    circuits.record("a", 41, failure=BAD)
    assert circuits.view("a", 41).cooldown_remaining_s == 10


def test_the_error_rate_opens_only_with_enough_recent_requests() -> None:
    """`error_rate` of at least `min_requests` in the last `window_s`; older outcomes do not count."""
    circuits, changes, _ = watched(failures=100, error_rate=0.5, min_requests=4, window_s=10, cooldown_s=5)
    for t, failure in ((0, BAD), (1, None), (2, BAD)):
        circuits.record("a", t, failure=failure)
    assert circuits.view("a", 2).state is CLOSED  # 2 of 3: too few requests to judge
    assert circuits.view("a", 2).recent_error_rate == pytest.approx(2 / 3)
    circuits.record("a", 3, failure=BAD)
    assert changes[-1] == ("a", "closed", "open", "75% of 4 recent requests failed")
    circuits2, changes2, _ = watched(failures=100, error_rate=0.5, min_requests=4, window_s=10, cooldown_s=5)
    for t, failure in ((0, BAD), (1, BAD), (12, None), (13, None), (14, BAD)):
        circuits2.record("b", t, failure=failure)
    assert changes2 == []  # the failures at 0 and 1 left the window: 1 of 3 recent
    assert circuits2.view("b", 14).recent_error_rate == pytest.approx(1 / 3)


def test_a_429_with_a_wait_opens_until_then_and_says_so() -> None:
    """A rate limit opens the circuit for its `Retry-After`; `rate_limited_for` tells how long is left."""
    circuits, changes, _ = watched(failures=5, cooldown_s=5)
    circuits.record("a", 0, failure=FailureKind.RATE_LIMITED, retry_after=30)
    assert changes == [("a", "closed", "open", "rate-limited for 30s")]
    assert circuits.rate_limited_for("a", 10) == 20 and circuits.blocked("a", 10) is not None
    assert circuits.rate_limited_for("a", 30) is None and circuits.admit("a", 30)
    circuits.record("a", 31, failure=FailureKind.RATE_LIMITED)  # no wait given: no opening
    circuits.record("a", 32, failure=FailureKind.RATE_LIMITED, retry_after=0)
    assert circuits.view("a", 32).state is not OPEN
    assert circuits.rate_limited_for("never-seen", 0) is None
    failing, _, _ = watched(failures=1, cooldown_s=5)
    failing.record("b", 0, failure=BAD)
    assert failing.rate_limited_for("b", 1) is None  # open, but not for a rate limit


def test_of_two_deadlines_the_later_wins() -> None:
    """A failure opening (5 s) does not shorten a rate-limit opening (60 s), and vice versa."""
    circuits, changes, openings = watched(failures=1, cooldown_s=5)
    circuits.record("a", 0, failure=FailureKind.RATE_LIMITED, retry_after=60)
    circuits.record("a", 1, failure=BAD)
    assert circuits.view("a", 1).cooldown_remaining_s == 59 and len(changes) == 1 and len(openings) == 1
    circuits.record("b", 0, failure=BAD)
    circuits.record("b", 1, failure=FailureKind.RATE_LIMITED, retry_after=60)
    assert circuits.view("b", 1).cooldown_remaining_s == 60 and circuits.view("b", 1).state is OPEN


def test_an_opening_from_another_process_is_respected_unless_our_probe_is_out() -> None:
    """`open_remotely`: the circuit opens here too (told as such); a later local deadline stands; a
    probe in flight decides for itself."""
    circuits, changes, openings = watched(failures=1, cooldown_s=5)
    circuits.open_remotely("a", 20, "3 failures in a row")
    assert circuits.blocked("a", 10) is not None and not circuits.admit("a", 10)
    assert changes == [("a", "closed", "open", "opened by another process: 3 failures in a row")]
    assert openings == []  # not re-published
    circuits.open_remotely("a", 15, "older news")
    assert circuits.view("a", 10).cooldown_remaining_s == 10 and len(changes) == 1
    circuits.open_remotely("a", 25, "newer")
    assert circuits.view("a", 10).cooldown_remaining_s == 15
    probing, changed, _ = watched(failures=1, cooldown_s=5)
    probing.record("b", 0, failure=BAD)
    assert probing.admit("b", 5) is Admission.PROBE  # our probe is out
    probing.open_remotely("b", 100, "elsewhere")
    assert probing.view("b", 6).state is HALF
    probing.record("b", 6, failure=None, probe=True)
    assert probing.view("b", 6).state is CLOSED and changed[-1][3] == "probe succeeded"


def test_a_cancelled_probe_frees_the_slot_and_bad_requests_do_not_count() -> None:
    """`release` after a cancelled probe lets the next one through; a 400 says nothing of health."""
    circuits, _, _ = watched(failures=1, cooldown_s=5)
    circuits.record("a", 0, failure=BAD)
    assert circuits.admit("a", 5) is Admission.PROBE and not circuits.admit("a", 5.1)
    circuits.release("a", probe=True)
    assert circuits.admit("a", 5.2) is Admission.PROBE
    healthy, changes, _ = watched(failures=1, cooldown_s=5)
    for t in range(3):
        healthy.record("b", t, failure=FailureKind.BAD_REQUEST)
        healthy.record("b", t, failure=FailureKind.CONTEXT_TOO_LONG)
    assert changes == [] and healthy.view("b", 3).consecutive_failures == 0


def test_what_health_shows_of_each_opening() -> None:
    """The cooldown left (0 when closed), the reason, the last errors (the failure kind without a message),
    and an opening that ends exactly at its deadline."""
    circuits, _, _ = watched(failures=100, error_rate=0.5, min_requests=2, window_s=10, cooldown_s=5)
    assert circuits.view("a", 0).cooldown_remaining_s == 0.0
    circuits.record("a", 0, failure=BAD)
    circuits.record("a", 1, failure=BAD)
    view = circuits.view("a", 1)
    assert (
        view.state is OPEN and view.cooldown_remaining_s == 5 and view.opened_by == "100% of 2 recent requests failed"
    )
    assert view.recent_errors == ("server_error", "server_error")
    assert circuits.blocked("a", 5.9) is not None and circuits.blocked("a", 6) is None and circuits.admit("a", 6)
    short, _, _ = watched(failures=5, cooldown_s=5)
    short.record("b", 0, failure=FailureKind.RATE_LIMITED, retry_after=0.5)
    assert short.view("b", 0).state is OPEN and short.rate_limited_for("b", 0.25) == 0.25
    remote, _, _ = watched(failures=5, cooldown_s=5)
    remote.open_remotely("c", 20, "3 failures in a row")
    assert remote.view("c", 10).opened_by == "3 failures in a row"
