"""Counters in time windows for the gateway's limits and budgets: per process, or shared through Redis.

A window is a named bucket (`rpm:2026-12-06T14:41`, `day:2026-12-06`, …) that expires after its
period. `take` counts one request if that keeps a counter within its cap (atomically, across every
process sharing the Redis); `add` adds tokens or dollars after a call; `read` returns current values.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger("router")

_TAKE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Window:
    """One counter: its storage name and how long it lives (seconds)."""

    name: str
    ttl_s: float


class Meter(Protocol):
    """Where the gateway's counters live."""

    async def take(self, window: Window, cap: int) -> bool:
        """Count one if the counter is below `cap`; False (nothing counted) when it is not."""
        ...

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        """Add each amount to its counter."""
        ...

    async def read(self, windows: Sequence[Window]) -> list[float]:
        """The counters' values (0 for one never written)."""
        ...

    async def aclose(self) -> None: ...


class MemoryMeter:
    """Counters in this process: limits and budgets hold per worker."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}  # name → (value, expires at)
        self._swept = time.monotonic()

    def _get(self, window: Window, now: float) -> float:
        value, expires = self._values.get(window.name, (0.0, 0.0))
        return value if expires > now else 0.0

    def _set(self, window: Window, value: float, now: float) -> None:
        if now - self._swept > 60:  # drop expired windows once a minute: memory stays bounded
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            self._swept = now
        expires = self._values.get(window.name, (0.0, now + window.ttl_s))[1]
        self._values[window.name] = (value, expires if expires > now else now + window.ttl_s)

    async def take(self, window: Window, cap: int) -> bool:
        now = time.monotonic()
        value = self._get(window, now)
        if value >= cap:
            return False
        self._set(window, value + 1, now)
        return True

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        now = time.monotonic()
        for window, amount in amounts:
            self._set(window, self._get(window, now) + amount, now)

    async def read(self, windows: Sequence[Window]) -> list[float]:
        now = time.monotonic()
        return [self._get(window, now) for window in windows]

    async def aclose(self) -> None:
        self._values.clear()


class RedisMeter:
    """Counters in Redis: every worker and replica sharing it enforces one limit. Redis down: the
    request is let through (a limit must not take the gateway down with it), with one warning."""

    def __init__(self, url: str, *, namespace: str = "", timeout_s: float = 0.5) -> None:
        import redis.asyncio

        self._prefix = f"inference-router:{namespace}:gateway:" if namespace else "inference-router:gateway:"
        self._redis: Any = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
        )
        self._take = self._redis.register_script(_TAKE)
        self._down = False

    def _failed(self, error: Exception) -> None:
        if not self._down:
            self._down = True
            logger.warning("gateway limits: Redis unavailable, letting requests through: %s", type(error).__name__)

    async def take(self, window: Window, cap: int) -> bool:
        try:
            taken = await self._take(keys=[self._prefix + window.name], args=[cap, int(window.ttl_s * 1000)])
        except Exception as error:  # redis' own errors, connection and timeout alike
            self._failed(error)
            return True
        self._down = False
        return bool(taken)

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for window, amount in amounts:
                    pipe.incrbyfloat(self._prefix + window.name, amount)
                    pipe.pexpire(self._prefix + window.name, int(window.ttl_s * 1000), nx=True)
                await pipe.execute()
        except Exception as error:
            self._failed(error)

    async def read(self, windows: Sequence[Window]) -> list[float]:
        if not windows:
            return []
        try:
            values = await self._redis.mget([self._prefix + w.name for w in windows])
        except Exception as error:
            self._failed(error)
            return [0.0] * len(windows)
        return [float(v) if v is not None else 0.0 for v in values]

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()
