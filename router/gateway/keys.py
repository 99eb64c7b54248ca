"""Who is calling and how much they may take: named keys, allowed models, rate limits and budgets.

A caller sends `Authorization: Bearer <secret>`. The secret is looked up by its SHA-256 and then
compared with `hmac.compare_digest`, so neither the lookup nor the comparison leaks how much of a
guess was right; secrets are registered with the log redaction and never appear in an error. The
key's limits (requests and tokens per minute, USD per UTC day and month) are counted in a `Meter`:
in memory for one process, in Redis for every worker and replica sharing it.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.config import GatewayConfig, GatewayKey
from router.errors import AuthenticationError, PermissionDeniedError, RateLimitError, status_error
from router.gateway.meter import Meter, Window
from router.observe.logs import register_secret
from router.observe.usage import KEY_TAG
from router.path.hints import RouteHints
from router.path.record import RouteRecord


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated key: its name and its settings (never its secret in a repr)."""

    name: str
    key: GatewayKey

    def __repr__(self) -> str:
        return f"Caller({self.name!r})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _error(cls: type[Any], status: int, message: str, code: str, *, headers: Mapping[str, str] | None = None) -> Any:
    kinds = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_exceeded"}
    body = {"message": message, "type": kinds.get(status, "invalid_request_error"), "param": None, "code": code}
    error: Any = status_error(cls, message, status, headers=dict(headers or {}), body=body)
    error.attempts, error.route = [], None  # a router exception, like every other the gateway answers with
    return error


class KeyRing:
    """The configured keys, the admin key, and the meter their limits are counted in."""

    def __init__(self, config: GatewayConfig, meter: Meter, *, clock: Callable[[], float] = time.time) -> None:
        self._by_digest: dict[bytes, tuple[str, GatewayKey]] = {}
        for name, key in config.keys.items():
            secret = key.secret.get_secret_value()
            register_secret(secret)
            self._by_digest[_digest(secret)] = (name, key)
        self._admin = config.admin_key.get_secret_value() if config.admin_key is not None else None
        register_secret(self._admin)
        self.meter = meter
        self._clock = clock

    @property
    def open(self) -> bool:
        """No keys configured: anyone who reaches the gateway may call it."""
        return not self._by_digest

    def identify(self, authorization: str | None) -> Caller | None:
        """The caller's key (None for an open gateway); a missing or unknown key raises 401."""
        if self.open:
            return None
        token = bearer(authorization)
        found = self._by_digest.get(_digest(token)) if token else None
        if found is None or token is None or not hmac.compare_digest(token, found[1].secret.get_secret_value()):
            raise _error(
                AuthenticationError,
                401,
                "missing or unknown API key: send `Authorization: Bearer <key>`",
                "invalid_api_key",
            )
        return Caller(*found)

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the header carries the admin key (always False without one configured)."""
        token = bearer(authorization)
        return self._admin is not None and token is not None and hmac.compare_digest(token, self._admin)

    def allowed(self, caller: Caller | None, model: str) -> bool:
        """Whether the caller may ask for `model`."""
        return caller is None or caller.key.models is None or model in caller.key.models

    async def admit(self, caller: Caller | None, model: str, hints: RouteHints) -> RouteHints:
        """Check the model, limits and budgets before a call (403 / 429 naming which); the hints with the
        key's tags added."""
        if caller is None:
            return hints
        key, now = caller.key, self._clock()
        if not self.allowed(caller, model):
            raise _error(
                PermissionDeniedError,
                403,
                f"key {caller.name!r} may not use model {model!r}; it may use: {', '.join(key.models or [])}",
                "model_not_allowed",
            )
        await self._check_budgets(caller, now)
        minute = _minute(caller.name, now)
        if key.tpm is not None:
            (tokens,) = await self.meter.read([minute("tpm")])
            if tokens >= key.tpm:
                raise self._limited(caller, f"{key.tpm} tokens per minute", now)
        if key.rpm is not None and not await self.meter.take(minute("rpm"), key.rpm):
            raise self._limited(caller, f"{key.rpm} requests per minute", now)
        tags = (*hints.tags, KEY_TAG + caller.name, *key.tags)
        return hints.model_copy(update={"tags": tuple(dict.fromkeys(tags))})

    async def _check_budgets(self, caller: Caller, now: float) -> None:
        key = caller.key
        budgets = _budget_windows(caller.name, key, now)
        if not budgets:
            return
        spent = await self.meter.read([window for _, _, window, _ in budgets])
        for (period, budget, _, reset_at), value in zip(budgets, spent, strict=True):
            if value >= budget:
                wait = max(1, math.ceil(reset_at - now))
                raise _error(
                    RateLimitError,
                    429,
                    f"key {caller.name!r} has spent its {period} budget of ${budget:g} (${value:.4f} spent); "
                    f"it resets in {wait} s",
                    f"{period}_budget_exceeded",
                    headers={"retry-after": str(wait)},
                )

    def _limited(self, caller: Caller, limit: str, now: float) -> Any:
        wait = max(1, math.ceil(60 - now % 60))
        return _error(
            RateLimitError,
            429,
            f"key {caller.name!r} is over its limit of {limit}; retry in {wait} s",
            "rate_limit_exceeded",
            headers={"retry-after": str(wait)},
        )

    async def charge(self, caller: Caller | None, record: RouteRecord) -> None:
        """Count a finished call's tokens and cost against the key's limits and budgets."""
        if caller is None:
            return
        key, now = caller.key, self._clock()
        amounts: list[tuple[Window, float]] = []
        usage = record.usage
        if key.tpm is not None and usage is not None:
            amounts.append((_minute(caller.name, now)("tpm"), usage.prompt_tokens + usage.completion_tokens))
        if record.cost_usd:
            amounts += [(window, record.cost_usd) for _, _, window, _ in _budget_windows(caller.name, key, now)]
        if amounts:
            await self.meter.add(amounts)


def _minute(name: str, now: float) -> Callable[[str], Window]:
    bucket = int(now // 60)
    return lambda kind: Window(f"{name}:{kind}:{bucket}", 120.0)


def _budget_windows(name: str, key: GatewayKey, now: float) -> list[tuple[str, float, Window, float]]:
    """(period, budget, its window, when it resets) for each budget the key has: UTC day, UTC month."""
    day = time.gmtime(now)
    day_start = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0))
    next_month = (day.tm_year + day.tm_mon // 12, day.tm_mon % 12 + 1)
    month_end = float(calendar.timegm((*next_month, 1, 0, 0, 0)))
    budgets: list[tuple[str, float, Window, float]] = []
    if key.daily_usd is not None:
        window = Window(f"{name}:day:{time.strftime('%Y-%m-%d', day)}", 2 * 86400.0)
        budgets.append(("daily", key.daily_usd, window, day_start + 86400.0))
    if key.monthly_usd is not None:
        budgets.append(
            ("monthly", key.monthly_usd, Window(f"{name}:month:{time.strftime('%Y-%m', day)}", 32 * 86400.0), month_end)
        )
    return budgets
