"""Where cached responses live: one small async interface, three homes (memory, SQLite, Redis).

Values are opaque bytes (the cache serialises entries itself); keys are strings built by
`router.cache.keys`. A store raises `CacheUnavailable` when its backend is broken; the cache
then degrades to no caching (with one warning) rather than failing a request.
"""

from __future__ import annotations

from typing import Protocol


class CacheUnavailable(Exception):
    """The store's backend can't be reached or written (Redis down, SQLite file unwritable)."""


class CacheStore(Protocol):
    """An async key → bytes store with per-entry expiry and a short lock for cross-process single-flight."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` for `ttl_s` seconds."""
        ...

    async def delete(self, key: str) -> None:
        """Forget `key` (no error if absent)."""
        ...

    async def acquire(self, key: str, ttl_s: float) -> bool:
        """Take a short lock on `key` (single-flight across processes); False if someone holds it.

        The lock expires by itself after `ttl_s`, so a holder that dies doesn't block others.
        """
        ...

    async def release(self, key: str) -> None:
        """Drop a lock taken with `acquire`."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
