"""Step 2 of the request path: the response cache.

`ResponseCache.plan` decides whether a call may use the cache and builds its key; `lookup`
and `put` read and write entries; `flight` makes concurrent identical calls share one upstream
call (in this process, and across processes through the store's short lock). A broken store
degrades to no caching with one warning; a request never fails because of the cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from router.cache.entries import Entry
from router.cache.keys import NOT_IN_KEY, cache_key, canonical_request, deterministic
from router.cache.memory import MemoryStore
from router.cache.store import CacheStore, CacheUnavailable
from router.config import CacheConfig, CacheOverride

logger = logging.getLogger("router")
_RETRY_BROKEN_S = 5.0
"""After a store failure, skip the cache this long before trying it again."""

__all__ = ["ENDPOINT_KEY", "CacheStore", "CacheUnavailable", "Entry", "Plan", "ResponseCache", "open_store"]

ENDPOINT_KEY = "__endpoint__"
"""Added to a non-chat request's body for its key, so answers of different endpoints never mix."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What the cache does for one call."""

    key: str
    read: bool
    write: bool
    only_if_cached: bool
    ttl_s: float


def open_store(config: CacheConfig) -> CacheStore:
    """The configured backend; SQLite and Redis are imported only when used."""
    if config.backend == "sqlite":
        from router.cache.sqlite import SqliteStore

        return SqliteStore(config.path or "inference-router-cache.sqlite3")
    if config.backend == "redis":
        from router.cache.redis import RedisStore

        return RedisStore(config.url or "redis://127.0.0.1:6379/0")
    return MemoryStore(max_entries=config.max_entries, max_bytes=config.max_bytes)


class ResponseCache:
    """Keys, policy, degradation and single-flight around a `CacheStore`."""

    def __init__(self, config: CacheConfig, store: CacheStore | None = None) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config)
        self._broken_until = 0.0
        self._warned = False
        self._flights: dict[str, anyio.Event] = {}
        self._locked: set[str] = set()

    def plan(
        self,
        candidates: Iterable[str],
        body: Mapping[str, Any],
        *,
        mode: str,
        ttl_s: float | None,
        alias: CacheOverride | None,
        always_same: bool = False,
    ) -> Plan | None:
        """The cache's part in a call, or None when the call doesn't touch the cache; `always_same`:
        the endpoint gives the same answer to the same request whatever its fields (embeddings)."""
        if mode == "no-store" or (alias is not None and not alias.enabled):
            return None
        cacheable = (alias.cacheable if alias and alias.cacheable else None) or self.config.cacheable
        if cacheable == "deterministic" and not (always_same or deterministic(body)) and mode != "only-if-cached":
            return None
        ttl = ttl_s or (alias.ttl_s if alias and alias.ttl_s else None) or self.config.ttl_s
        key = cache_key(candidates, body, namespace=self.config.namespace)
        return Plan(key, read=mode != "refresh", write=True, only_if_cached=mode == "only-if-cached", ttl_s=ttl)

    def _usable(self) -> bool:
        return time.monotonic() >= self._broken_until

    def _failed(self, error: Exception) -> None:
        self._broken_until = time.monotonic() + _RETRY_BROKEN_S
        if not self._warned:
            self._warned = True
            logger.warning("response cache unavailable, serving without it: %s", error)

    def _ok(self) -> None:
        if self._warned:
            self._warned = False
            logger.info("response cache available again")

    async def lookup(self, key: str) -> Entry | None:
        """The stored answer, or None (a miss, an unreadable entry, or a broken store)."""
        if not self._usable():
            return None
        try:
            raw = await self.store.get(key)
        except CacheUnavailable as error:
            self._failed(error)
            return None
        self._ok()
        return Entry.decode(raw) if raw is not None else None

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Store an answer; failures only warn."""
        if not self._usable():
            return
        try:
            await self.store.set(key, entry.encode(), ttl_s)
        except CacheUnavailable as error:
            self._failed(error)
        else:
            self._ok()

    async def join(self, key: str, *, wait_s: float) -> bool:
        """Single-flight: True for the one caller that should go upstream (it must call `done`);
        the others wait (at most `wait_s`) for its answer and get False — then look the key up
        again and, if it's still missing (the holder failed or died), go upstream themselves."""
        wait_s = min(wait_s, self.config.lock_wait_s)
        local = self._flights.get(key)
        if local is not None:
            with anyio.move_on_after(wait_s):
                await local.wait()
            return False
        self._flights[key] = anyio.Event()
        shared = await self._acquire(key, wait_s)
        if shared is False:  # another process holds it: wait for its answer to appear
            deadline = anyio.current_time() + wait_s
            while anyio.current_time() < deadline:
                if await self.lookup(key) is not None:
                    await self.done(key, locked=False)
                    return False
                if await self._acquire(key, wait_s):
                    shared = True
                    break
                await anyio.sleep(0.02)
        if shared:
            self._locked.add(key)
            # Checked again under the lock: the holder we waited on may have stored its answer and let
            # go between our last look and our taking the lock. Without this, a second upstream call.
            if await self.lookup(key) is not None:
                await self.done(key)
                return False
        return True

    async def done(self, key: str, *, locked: bool = True) -> None:
        """End a flight: wake the waiters and drop the cross-process lock."""
        event = self._flights.pop(key, None)
        if event is not None:
            event.set()
        if locked and key in self._locked:
            self._locked.discard(key)
            try:
                await self.store.release(key + ":lock")
            except CacheUnavailable as error:
                self._failed(error)

    async def _acquire(self, key: str, wait_s: float) -> bool | None:
        """The cross-process lock: True taken, False held elsewhere, None when the store can't lock."""
        if not self._usable():
            return None
        try:
            return await self.store.acquire(key + ":lock", wait_s)
        except CacheUnavailable as error:
            self._failed(error)
            return None

    def explain(self, candidates: Iterable[str], body: Mapping[str, Any], *, mode: str = "default") -> dict[str, Any]:
        """Which fields the key covers, which it ignores, and whether this request may be cached."""
        cacheable = self.config.cacheable == "all" or deterministic(body) or mode == "only-if-cached"
        return {
            "key": cache_key(candidates, body, namespace=self.config.namespace),
            "key_fields": sorted(canonical_request(body)),
            "ignored_fields": sorted(set(body) & NOT_IN_KEY),
            "candidates": sorted(set(candidates)),
            "cacheable": cacheable and mode != "no-store",
            "why": (
                "no-store was asked"
                if mode == "no-store"
                else "deterministic request (temperature 0 or a seed)"
                if deterministic(body)
                else "the cache takes every request (cacheable: all)"
                if self.config.cacheable == "all"
                else "not deterministic: set temperature 0 or a seed, or cacheable: all"
            ),
        }

    async def aclose(self) -> None:
        await self.store.aclose()
