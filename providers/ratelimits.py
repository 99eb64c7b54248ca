"""Reading rate-limit and retry hints from response headers and error messages.

Groq sends Go durations (`2m59.56s`), Cerebras float seconds per window
(`x-ratelimit-reset-tokens-minute: 11.38`), OpenAI-style servers `retry-after` in seconds or
as an HTTP date and sometimes `retry-after-ms`. One parser reads them all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_HEADER = re.compile(r"^x-ratelimit-(limit|remaining|reset)-(requests|tokens)(?:-(minute|hour|day))?$")
_TRY_AGAIN_IN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+)", re.IGNORECASE)


def parse_duration(value: str) -> float | None:
    """Seconds from `12`, `1.5`, `2m59.56s`, `577.5ms` or `1h2m3s`; None if unreadable."""
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The provider's wait hint in seconds: `retry-after-ms`, then `retry-after` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = parse_duration(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_message(message: str) -> float | None:
    """Groq puts the wait in the text: `Please try again in 9m38.016s.`"""
    match = _TRY_AGAIN_IN.search(message)
    return parse_duration(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class RateLimitWindow:
    """One limit the provider reports: how much is left and when it refills."""

    limit: float | None = None
    remaining: float | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """Every `x-ratelimit-*` window in a response, keyed like `requests`, `tokens-minute`."""

    windows: dict[str, RateLimitWindow] = field(default_factory=dict)

    def tightest(self, what: str) -> RateLimitWindow | None:
        """The window for `requests` or `tokens` with the least remaining."""
        found = [w for key, w in self.windows.items() if key.split("-")[0] == what and w.remaining is not None]
        return min(found, key=lambda w: w.remaining or 0.0) if found else None

    def __bool__(self) -> bool:
        return bool(self.windows)


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimitInfo:
    """Collect Groq-, Cerebras- and OpenAI-style `x-ratelimit-*` headers into windows."""
    parts: dict[str, dict[str, float | None]] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if not lowered.startswith("x-ratelimit-"):
            continue
        match = _HEADER.match(lowered)
        if match is None:
            continue
        field_name, what, period = match.groups()
        key = f"{what}-{period}" if period else what
        if field_name == "reset":
            number = parse_duration(value)
        else:
            try:
                number = float(value)
            except ValueError:
                number = None
        parts.setdefault(key, {})[field_name] = number
    return RateLimitInfo(
        {key: RateLimitWindow(p.get("limit"), p.get("remaining"), p.get("reset")) for key, p in parts.items()}
    )
