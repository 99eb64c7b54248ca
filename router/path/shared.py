"""Shared state in Redis, for many router processes behind one view (`state: {backend: redis}`).

One thing must hold exactly across processes, so it goes through Redis on the request path:
concurrency slots of deployments with a `max_concurrency` (an atomic take-if-below-cap, each
slot a lease of `lease_s` that the holder renews at every sync while it holds the slot, so a
process that dies frees its slots within a lease, and a stream of any length keeps its own).
Everything else is shared in the background, never in the ranking itself: every `refresh_s`
each process publishes its circuit openings and
its view of each deployment (in-flight count, latency estimates, rate-limit headroom) and reads
the others', which its stats then merge into what policies see.
A Redis outage degrades to local state with one warning and recovers when Redis returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import anyio

from router.path.circuit import Circuits
from router.path.stats import MemoryStats, PeerView

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
        self, url: str, *, namespace: str = "", refresh_s: float = 0.25, lease_s: float = 60.0, timeout_s: float = 0.5
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
        self._held: dict[str, set[str]] = {}
        """Slot tokens this process holds, by deployment: their leases are renewed at each sync."""
        self._down = False
        self._me = uuid.uuid4().hex

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
        if not taken:
            return None
        self._held.setdefault(candidate_id, set()).add(token)
        return token

    async def give_slot(self, candidate_id: str, token: str) -> None:
        """Give a slot back (a lease that can't be given back expires by itself)."""
        if token == _LOCAL:
            return
        held = self._held.get(candidate_id)
        if held is not None:
            held.discard(token)
            if not held:
                del self._held[candidate_id]
        with anyio.CancelScope(shield=True):
            try:
                await self._redis.zrem(self._prefix + "slots:" + candidate_id, token)
            except Exception as error:
                self._failed(error)

    def circuit_opened(self, candidate_id: str, until_epoch: float, why: str) -> None:
        """Queue a circuit opening for the next publish (called from the circuit, synchronously)."""
        self._outbox[candidate_id] = (until_epoch, why)

    def circuit_closed(self, candidate_id: str) -> None:
        """Queue the withdrawal of this process's opening (its circuit closed before the opening's end),
        so the next read-back doesn't re-open it here."""
        self._outbox[candidate_id] = (0.0, "")

    async def sync(self, circuits: Circuits, candidate_ids: Iterable[str], stats: MemoryStats | None = None) -> None:
        """Publish this process's circuit openings and stats; apply the other processes' ones."""
        ids = list(candidate_ids)
        outbox, self._outbox = self._outbox, {}
        now_epoch, now = time.time(), anyio.current_time()
        keep_ms = max(1000, int(self.refresh_s * 10_000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                lease_ms = int(self.lease_s * 1000)
                for candidate_id, tokens in self._held.items():  # still ours: a fresh lease each
                    key = self._prefix + "slots:" + candidate_id
                    pipe.zadd(key, dict.fromkeys(tokens, now_epoch + self.lease_s), xx=True)
                    pipe.pexpire(key, lease_ms)
                for candidate_id, (until, why) in outbox.items():
                    ttl_ms = int((until - now_epoch) * 1000)
                    if ttl_ms <= 0:
                        pipe.delete(self._prefix + "circuit:" + candidate_id)
                    else:
                        pipe.set(self._prefix + "circuit:" + candidate_id, f"{until}|{why}", px=ttl_ms)
                for candidate_id in ids if stats is not None else ():
                    report = stats.local_report(candidate_id, now) if stats is not None else None
                    if report is not None:
                        key = self._prefix + "stats:" + candidate_id
                        pipe.hset(key, self._me, json.dumps({**report, "at": now_epoch}))
                        pipe.pexpire(key, keep_ms)
                for candidate_id in ids:
                    pipe.get(self._prefix + "circuit:" + candidate_id)
                for candidate_id in ids if stats is not None else ():
                    pipe.hgetall(self._prefix + "stats:" + candidate_id)
                replies = await pipe.execute()
        except Exception as error:
            self._outbox = {**outbox, **self._outbox}
            self._failed(error)
            return
        self._ok()
        peers = replies[-len(ids) :] if stats is not None and ids else []
        values = replies[len(replies) - len(ids) - len(peers) : len(replies) - len(peers)] if ids else []
        if stats is not None:
            for candidate_id, fields in zip(ids, peers, strict=True):
                stats.apply_peers(candidate_id, self._merge(fields, now_epoch, now))
        for candidate_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            until_text, _, why = value.decode().partition("|")
            remaining = float(until_text) - now_epoch
            if remaining > 0:
                circuits.open_remotely(candidate_id, now + remaining, f"opened by another process: {why}")

    def _merge(self, fields: dict[bytes, bytes], now_epoch: float, now: float) -> PeerView | None:
        """The other processes' fresh reports of one deployment, combined."""
        reports = []
        for owner, raw in fields.items():
            if owner.decode() == self._me:
                continue
            report = json.loads(raw)
            if now_epoch - report.get("at", 0) <= self.refresh_s * 4:  # a dead process's report goes stale
                reports.append(report)
        if not reports:
            return None

        def values(name: str) -> list[float]:
            return [r[name] for r in reports if isinstance(r.get(name), (int, float))]

        limited = [r["limited_for_s"] - (now_epoch - r["at"]) for r in reports if r.get("limited_for_s")]
        return PeerView(
            in_flight=int(sum(values("in_flight"))),
            ttft_s=max(values("ttft_s"), default=None),
            latency_s=max(values("latency_s"), default=None),
            tokens_per_s=min(values("tokens_per_s"), default=None),
            limited_until=now + max(limited) if limited and max(limited) > 0 else None,
            remaining_requests=min(values("remaining_requests"), default=None),
            remaining_tokens=min(values("remaining_tokens"), default=None),
        )

    async def run(self, circuits: Circuits, candidate_ids: Iterable[str], stats: MemoryStats | None = None) -> None:
        """Sync every `refresh_s` until cancelled."""
        ids = list(candidate_ids)
        while True:
            await self.sync(circuits, ids, stats)
            await anyio.sleep(self.refresh_s)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing to release
            await self._redis.aclose()
