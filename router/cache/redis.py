"""A cache store on a Redis server, shared by every process and machine that can reach it.

Values are `SET key value PX ttl`; a lock is `SET lockkey token NX PX ttl`, released by a small
Lua compare-and-delete so a holder whose lock expired can't drop its successor's. Keys live
under `prefix` (values under `{prefix}v:`, locks under `{prefix}lock:`), so several routers or
apps can share one server.

Sockets time out quickly (a cache that waits seconds for Redis is worse than no cache); a dropped
connection is retried once at once (a pooled connection can be stale after a server restart),
a timeout is not. Every Redis or socket error becomes `CacheUnavailable`, whose message names
the server with any password replaced by `***`. The `redis` package is imported only when a
`RedisStore` is made, so `import router` doesn't pay for it.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from router.cache.store import CacheUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisStore", "redact_url"]

_T = TypeVar("_T")

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def redact_url(url: str) -> str:
    """`url` with any password (in the userinfo or a `password=` query parameter) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in pairs):
            query = urlencode([(n, "***" if n.lower() == "password" else v) for n, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    rebuilt = urlunsplit(("", "", parts.path, query, parts.fragment))
    return f"{parts.scheme}://{netloc}{rebuilt}"  # urlunsplit would drop the // of an empty unix:// netloc


def _url_secrets(url: str) -> list[str]:
    """The passwords in `url`, raw and unquoted, to scrub from error messages."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for n, v in parse_qsl(parts.query, keep_blank_values=True) if n.lower() == "password"]
    except ValueError:
        return []
    return sorted({s for p in found if p for s in (p, unquote(p))}, key=len, reverse=True)


def _px(ttl_s: float) -> int | None:
    """`ttl_s` as whole milliseconds for PX (at least 1), or None (no expiry) for an infinite one."""
    if math.isinf(ttl_s) and ttl_s > 0:
        return None
    return max(1, round(ttl_s * 1000)) if ttl_s > 0 else 1


class RedisStore:
    """A `CacheStore` on the Redis server at `url` (`redis://[:password@]host:port/db`, `rediss://`, `unix://`).

    `connect_timeout_s` bounds making a connection and `timeout_s` each command's reply; past
    either the call raises `CacheUnavailable`. `max_connections` caps the connection pool
    (None: redis-py's default). Nothing connects until the first call.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "inference-router:",
        connect_timeout_s: float = 0.5,
        timeout_s: float = 1.0,
        max_connections: int | None = None,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.url = redact_url(url)  # never keep the password where a repr or a log could show it
        self.prefix = prefix
        options: dict[str, Any] = {}
        if max_connections is not None:
            options["max_connections"] = max_connections
        try:
            self._client: Redis = Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                # One immediate retry on a dropped connection (stale after a restart); none on a timeout.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                **options,
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self.url}: {exc}") from None
        self._secrets = _url_secrets(url)
        self._release: AsyncScript = self._client.register_script(_RELEASE)
        self._tokens: dict[str, str] = {}  # lock key → our token, for locks this store holds
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # -- the CacheStore interface --------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._call("GET", self._client.get(self._value_key(key)))
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode()  # bytes, as decode_responses is off

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not ttl_s > 0:  # zero, negative or NaN: the entry would be expired already
            await self.delete(key)
            return
        px = _px(ttl_s)
        await self._call("SET", self._client.set(self._value_key(key), bytes(value), px=px))

    async def delete(self, key: str) -> None:
        await self._call("DEL", self._client.delete(self._value_key(key)))

    async def acquire(self, key: str, ttl_s: float) -> bool:
        px = _px(ttl_s)  # a zero, negative or NaN ttl makes a lock that lapses at once
        token = secrets.token_hex(16)
        won = await self._call("SET NX", self._client.set(self._lock_key(key), token, nx=True, px=px))
        if won:
            self._tokens[key] = token
        return bool(won)

    async def release(self, key: str) -> None:
        token = self._tokens.pop(key, None)
        if token is None:
            return  # not ours (never taken, or already released): nothing to drop
        await self._call("release", self._release(keys=[self._lock_key(key)], args=[token]))

    async def aclose(self) -> None:
        self._closed = True
        self._tokens.clear()
        with contextlib.suppress(Exception):  # closing connections to a dead server: nothing left to release
            await self._client.aclose()

    # -- plumbing ------------------------------------------------------------------------------

    def _value_key(self, key: str) -> str:
        return f"{self.prefix}v:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    async def _call(self, what: str, command: Awaitable[_T]) -> _T:
        from redis.exceptions import RedisError

        if self._closed:
            if hasattr(command, "close"):
                command.close()  # the coroutine was made but will never run
            raise CacheUnavailable(f"Redis cache {self.url}: the store is closed")
        try:
            return await command
        except (RedisError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            for secret in self._secrets:
                detail = detail.replace(secret, "***")
            raise CacheUnavailable(f"Redis cache {self.url}: {what} failed: {detail}") from exc
