"""A cache store in one SQLite file: survives restarts, shared by the processes of one machine.

Reads try a read-only connection on the loop's own thread first (in WAL mode a read never waits
for a writer, and its busy timeout is 0, so it can't stall the loop on a lock); everything else,
and a read that finds the file busy, runs in a worker thread (`anyio.to_thread.run_sync`), so a slow disk or a
write lock held by another process never stalls the event loop. The store keeps one
connection, used by one thread at a time (a per-store capacity limiter queues callers in async
land; a thread lock guards the connection itself).

Layout: `entries(key, value, expires_at)` and `locks(key, token, expires_at)`, with expiry as an
absolute wall-clock epoch so every process agrees on it. Reads ignore expired rows; expired
rows are purged now and then (on open, then at most once per `purge_interval_s`, on writes).

The file runs in WAL mode, so readers don't wait for the writer; writers that find the file
locked wait up to `busy_timeout_s` (SQLite's busy handler) and the read-modify-write of
`acquire` takes the write lock up front (`BEGIN IMMEDIATE`). Any sqlite3 or file-system error
becomes `CacheUnavailable`, naming the file.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from router.cache.store import CacheUnavailable

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at);
CREATE TABLE IF NOT EXISTS locks (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


def _lock_ttl(ttl_s: float) -> float:
    """A lock's lifetime: at least a millisecond (a zero, negative or NaN `ttl_s` makes a lock that lapses at once)."""
    return ttl_s if ttl_s >= 0.001 else 0.001


class SqliteStore:
    """A `CacheStore` in the SQLite file at `path` (created, with its folder, on first use).

    `busy_timeout_s` bounds how long a call waits for another process's write lock before it
    gives up with `CacheUnavailable`; `purge_interval_s` is how often writes also delete
    expired rows.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0, purge_interval_s: float = 60.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.purge_interval_s = purge_interval_s
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        """Read-only, never waiting (busy_timeout 0), used on the event loop's own thread: in WAL mode a
        read doesn't wait for writers, so a hit skips the worker-thread hop; a busy reader falls back."""
        self._pid = os.getpid()  # the process that opened `_conn`
        self._conn_lock = threading.Lock()  # one thread on the connection at a time
        self._limiter: anyio.CapacityLimiter | None = None  # made on first use, inside the event loop
        self._tokens: dict[str, str] = {}  # lock key → our token, for locks this store holds
        self._last_purge = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- the CacheStore interface --------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        query = "SELECT value FROM entries WHERE key = ? AND expires_at > ?"
        reader = self._reader
        if reader is not None and self._pid == os.getpid() and not self._closed:
            try:
                row = reader.execute(query, (key, time.time())).fetchone()
            except sqlite3.Error:
                pass  # busy, or the file changed under us: the worker thread decides
            else:
                return None if row is None else bytes(row[0])

        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(query, (key, time.time())).fetchone()
            if self._reader is None:
                self._reader = self._open_reader()
            return None if row is None else bytes(row[0])

        return await self._run("read", op)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not ttl_s > 0:  # zero, negative or NaN: the entry would be expired already
            await self.delete(key)
            return
        blob = bytes(value)

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO entries (key, value, expires_at) VALUES (?, ?, ?)", (key, blob, now + ttl_s)
            )
            self._maybe_purge(conn, now)

        await self._run("write", op)

    async def delete(self, key: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))

        await self._run("write", op)

    async def acquire(self, key: str, ttl_s: float) -> bool:
        ttl_s = _lock_ttl(ttl_s)
        token = secrets.token_hex(16)

        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock before looking, so two takers can't both win
            try:
                now = time.time()
                conn.execute("DELETE FROM locks WHERE key = ? AND expires_at <= ?", (key, now))  # take over a dead lock
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO locks (key, token, expires_at) VALUES (?, ?, ?)", (key, token, now + ttl_s)
                )
                won = cursor.rowcount == 1
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return won

        won = await self._run("lock", op)
        if won:
            self._tokens[key] = token
        return won

    async def release(self, key: str) -> None:
        token = self._tokens.pop(key, None)
        if token is None:
            return  # not ours (never taken, or already released): nothing to drop

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM locks WHERE key = ? AND token = ?", (key, token))  # not a successor's lock

        await self._run("unlock", op)

    async def aclose(self) -> None:
        self._closed = True
        self._tokens.clear()

        def close() -> None:
            with self._conn_lock:
                conn, self._conn = self._conn, None
                reader, self._reader = self._reader, None
                for each in (conn, reader):
                    if each is not None:
                        each.close()

        await anyio.to_thread.run_sync(close, limiter=self._get_limiter())

    # -- plumbing ------------------------------------------------------------------------------

    def _get_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return self._limiter

    async def _run(self, what: str, op: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise CacheUnavailable(f"SQLite cache {self.path}: the store is closed")

        def call() -> _T:
            with self._conn_lock:
                if self._closed:  # closed while this call waited its turn
                    raise CacheUnavailable(f"SQLite cache {self.path}: the store is closed")
                try:
                    return op(self._connection())
                except (sqlite3.Error, OSError) as exc:
                    raise CacheUnavailable(f"SQLite cache {self.path}: {what} failed: {exc}") from exc

        return await anyio.to_thread.run_sync(call, limiter=self._get_limiter())

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opening (and if need be creating) the file first. Worker thread only."""
        if self._conn is not None:
            if self._pid == os.getpid():
                return self._conn
            self._conn = None  # inherited across fork(): SQLite connections must not be shared, so leave it be
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): each statement is its own transaction unless we BEGIN.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable enough for a cache, and fast
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"made by a newer inference-router (schema {version} > {_SCHEMA_VERSION})")
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;")
            self._purge(conn, time.time())
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        reader.execute("PRAGMA busy_timeout = 0")
        return reader

    def _maybe_purge(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_purge >= self.purge_interval_s:
            self._purge(conn, now)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM locks WHERE expires_at <= ?", (now,))
        self._last_purge = now
