"""Reading wait hints and rate-limit windows (README "Retry-After", rate-limit headroom): every format
the providers use, and nothing made up from what cannot be read."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from providers.errors import ProviderError, RateLimited
from providers.ratelimits import RateLimitInfo, RateLimitWindow, parse_duration, parse_rate_limits, parse_retry_after


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0.25", 0.25), ("-3", 0.0), ("2m59.56s", 179.56), ("577.5ms", 0.5775), ("1h2m3s", 3723.0), ("12", 12.0)],
)
def test_durations_in_every_providers_format(text: str, seconds: float) -> None:
    """Plain seconds (never negative), Go durations (Groq), milliseconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "  ", "5x", "1mx", "s5", "1m x", "m"])
def test_unreadable_durations_are_none(text: str) -> None:
    """A duration with anything unreadable in it is no duration (not a partial sum)."""
    assert parse_duration(text) is None


def test_retry_after_in_milliseconds_seconds_and_as_a_date() -> None:
    """`retry-after-ms` first, then `retry-after` as seconds or an HTTP date (past dates: no wait)."""
    assert parse_retry_after({"retry-after-ms": "400", "retry-after": "9"}) == pytest.approx(0.4)
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "9"}) == 9.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    now = 1_800_000_000.0
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(30)
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    later = parse_retry_after({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert later is not None and 55 < later <= 60
    assert parse_retry_after({"retry-after": "whenever"}) is None and parse_retry_after({}) is None


def test_rate_limit_windows_and_the_tightest() -> None:
    """Every `x-ratelimit-*` window is read (other headers skipped); the tightest has the least left."""
    info = parse_rate_limits(
        {
            "content-type": "application/json",
            "x-ratelimit-something-else": "3",  # an unknown window is skipped, the rest still read
            "x-ratelimit-limit-tokens-day": "1000",
            "x-ratelimit-remaining-tokens-day": "1",
            "x-ratelimit-remaining-tokens-minute": "0",
            "x-ratelimit-reset-tokens-minute": "11.38",
            "x-ratelimit-remaining-requests-day": "5",
            "x-ratelimit-remaining-requests-hour": "not a number",
        }
    )
    assert info and not RateLimitInfo()
    assert info.windows["tokens-day"] == RateLimitWindow(limit=1000.0, remaining=1.0)
    assert info.windows["requests-hour"] == RateLimitWindow(remaining=None)
    tokens = info.tightest("tokens")
    assert tokens is not None and tokens.remaining == 0.0 and tokens.reset_s == pytest.approx(11.38)
    requests = info.tightest("requests")
    assert requests is not None and requests.remaining == 5.0
    assert RateLimitInfo({"requests-hour": RateLimitWindow(remaining=None)}).tightest("requests") is None


def test_a_provider_error_keeps_its_body_and_names_itself() -> None:
    """The failure keeps the provider's body (for the caller's exception) and a readable repr."""
    error = RateLimited("slow down", status_code=429, body={"error": {"message": "slow down"}})
    assert error.body == {"error": {"message": "slow down"}} and error.retryable is True
    assert repr(error) == "RateLimited('slow down', status_code=429)"
    assert ProviderError("x", retryable=False).retryable is False
