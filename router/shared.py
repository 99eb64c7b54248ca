"""Shared state in Redis, for many router processes behind one view (`state: {backend: redis}`).

Two things must hold across processes, so they go through Redis on the request path:
concurrency slots of deployments with a `max_concurrency` (an atomic take-if-below-cap, each
slot a lease that expires if its holder dies), and nothing else. Everything else is shared in
the background, never in the ranking itself: circuit openings are published when they happen
and read back every `refresh_s`, so a circuit opened by one process is respected by the others.
A Redis outage degrades to local state with one warning and recovers when Redis returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import anyio

from router.circuit import Circuits

logger = logging.getLogger("router")

_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.floor(ARGV[4] * 1000))
return 1
"""
_LOCAL = "local"
"""The slot token when Redis is down: the local in-flight count is all that holds the cap."""


class SharedState:
    """Concurrency slots and circuit openings shared through one Redis."""

    def __init__(
        self, url: str, *, namespace: str = "", refresh_s: float = 0.25, lease_s: float = 600.0, timeout_s: float = 0.5
    ) -> None:
        import redis.asyncio

        self.url = url
        self.refresh_s = refresh_s
        self.lease_s = lease_s
        self._prefix = f"inference-router:{namespace}:" if namespace else "inference-router:"
        self._redis: Any = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
        )
        self._take = self._redis.register_script(_TAKE_SLOT)
        self._outbox: dict[str, tuple[float, str]] = {}
        self._down = False

    def _failed(self, error: Exception) -> None:
        if not self._down:
            self._down = True
            logger.warning("shared state unavailable, using local state: %s", type(error).__name__)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            logger.info("shared state available again")

    async def take_slot(self, candidate_id: str, cap: int) -> str | None:
        """A slot under the deployment's cap across every process (its token), or None when full."""
        token = uuid.uuid4().hex
        try:
            taken = await self._take(
                keys=[self._prefix + "slots:" + candidate_id], args=[time.time(), cap, token, self.lease_s]
            )
        except Exception as error:  # redis' own errors, connection and timeout alike
            self._failed(error)
            return _LOCAL
        self._ok()
        return token if taken else None

    async def give_slot(self, candidate_id: str, token: str) -> None:
        """Give a slot back (a lease that can't be given back expires by itself)."""
        if token == _LOCAL:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._redis.zrem(self._prefix + "slots:" + candidate_id, token)
            except Exception as error:
                self._failed(error)

    def circuit_opened(self, candidate_id: str, until_epoch: float, why: str) -> None:
        """Queue a circuit opening for the next publish (called from the circuit, synchronously)."""
        self._outbox[candidate_id] = (until_epoch, why)

    async def sync(self, circuits: Circuits, candidate_ids: Iterable[str]) -> None:
        """Publish this process's new circuit openings; apply the other processes' ones."""
        ids = list(candidate_ids)
        outbox, self._outbox = self._outbox, {}
        try:
            for candidate_id, (until, why) in outbox.items():
                ttl_ms = max(1, int((until - time.time()) * 1000))
                await self._redis.set(self._prefix + "circuit:" + candidate_id, f"{until}|{why}", px=ttl_ms)
            values = await self._redis.mget([self._prefix + "circuit:" + i for i in ids]) if ids else []
        except Exception as error:
            self._outbox = {**outbox, **self._outbox}
            self._failed(error)
            return
        self._ok()
        now_epoch, now = time.time(), anyio.current_time()
        for candidate_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            until_text, _, why = value.decode().partition("|")
            remaining = float(until_text) - now_epoch
            if remaining > 0:
                circuits.open_remotely(candidate_id, now + remaining, f"opened by another process: {why}")

    async def run(self, circuits: Circuits, candidate_ids: Iterable[str]) -> None:
        """Sync every `refresh_s` until cancelled."""
        ids = list(candidate_ids)
        while True:
            await self.sync(circuits, ids)
            await anyio.sleep(self.refresh_s)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to release
            await self._redis.aclose()
