"""Usage and cost accounting: every finished call's route record, added up per deployment, alias and tag.

`UsageLedger` is an `Observer`: the router feeds it each call that succeeded or failed, and it
adds the call to per-minute totals in memory (`ledger.usage(...)`). With a `path` it also adds
them to a SQLite file, so `read_usage(path)` (and `inference-router usage --since 1d`) sees the
totals of every process and every run that shared the file.

Attribution — each call is counted once, on the deployment that answered it:

- A served call: `requests=1`, its tokens (`record.usage`; `cached_tokens` are the cached prompt
  tokens) and cost (`record.cost_usd`, 0 when unpriced) on the serving deployment's key
  (`record.backend/provider/model`), alias `record.alias or record.requested_model`.
- Every sent attempt (`Attempt.sent`) counts `attempts=1` on its own deployment, and `errors=1`
  when its outcome is a failure (anything but `ok`, `hedge_lost`, `cancelled`). A call that fell
  over from A to B gives A `attempts=1 errors=1 requests=0` and B `attempts=1 requests=1`.
- A cache hit: backend and provider `(cache)`, model `record.requested_model`; `requests=1`,
  `cache_hits=1`, no tokens, cost 0.
- A failed call: `requests=1 failures=1` on the last sent attempt's deployment, or on backend and
  provider `(none)` (model `record.requested_model`) when nothing was sent. Tokens and cost the
  record carries (a stream that broke after the commit point was billed for what it sent) are
  counted there too.
- Keys: calls made through the gateway carry the tag `key:NAME`; grouping by `key` gives one row per
  key (calls without one under key `""`).
- Tags: a call's tags (deduplicated, sorted) are part of its key. Grouping by `tag` gives one row
  per tag (untagged calls under tag `""`), so such rows add up to more than the total when calls
  carry several tags; grouping without `tag` counts each call once.

Totals are kept per minute (the wall-clock minute the call finished in) so `since_s` can select
recent ones; a bucket counts if it overlaps the window, so the resolution is one minute. In memory,
minutes older than `keep_minutes_s` (7 days) are folded into one bucket, so a long-lived process
holds at most a week of minutes × distinct (deployment, alias, tags) keys and its totals stay whole.

The file holds one table, `usage`, keyed by (minute, backend, provider, model, alias, tags JSON)
with a counter per column. A flush adds only what arrived since the last flush, with an upsert
that adds to the stored counters, so several processes can share one file; it runs in a worker
thread (WAL mode, a busy timeout), never on the event loop. A flush that fails logs a warning and
keeps its deltas for the next one: nothing is lost short of the process ending. Only counters
are stored: never request content, never API keys.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from router.path.events import CallInfo, Observer
from router.path.record import Attempt, RouteRecord

__all__ = ["GROUP_KEYS", "KEY_TAG", "UsageLedger", "UsageRow", "parse_since", "read_usage"]

logger = logging.getLogger("router")

GROUP_KEYS = ("backend", "provider", "model", "alias", "tag", "key")

KEY_TAG = "key:"
"""The gateway tags each call with `key:NAME` (the caller's key); grouping by `key` reads that tag."""

CACHE_BACKEND = "(cache)"
"""Backend and provider of cache hits."""
NO_BACKEND = "(none)"
"""Backend and provider of failed calls that sent nothing."""

_NOT_ERRORS = frozenset({"ok", "hedge_lost", "cancelled"})
"""Attempt outcomes that are not the deployment's fault."""

_Deployment = tuple[str, str, str]
"""(backend, provider, model)."""
_CallKey = tuple[str, str, str, str, tuple[str, ...]]
"""(backend, provider, model, alias, tags)."""
_Key = tuple[int, str, str, str, str, tuple[str, ...]]
"""(minute, backend, provider, model, alias, tags): what totals are kept by."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals for one group; a key field is None when the query did not group by it."""

    backend: str | None
    provider: str | None
    model: str | None
    alias: str | None
    tag: str | None
    key: str | None
    """The gateway key that made the calls (`""`: none, e.g. calls made through the SDK)."""
    requests: int
    """Calls attributed here (served, cache hits, or failed here)."""
    attempts: int
    """Requests actually sent to this deployment."""
    errors: int
    """Sent attempts that failed."""
    failures: int
    """Calls that ended in an error for the caller."""
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    cache_hits: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON output."""
        return asdict(self)


@dataclass(slots=True)
class _Counts:
    """Mutable counters for one key."""

    requests: int = 0
    attempts: int = 0
    errors: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0

    def add(self, other: _Counts) -> None:
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> tuple[int | float, ...]:
        return tuple(getattr(self, name) for name in _COUNTERS)


_COUNTERS = tuple(f.name for f in fields(_Counts))
"""The counter names, in `UsageRow` and column order."""

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL,
    backend TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    tags TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, backend, provider, model, alias, tags)
);
CREATE INDEX IF NOT EXISTS usage_minute ON usage (minute);
"""
_KEY_COLUMNS = ("minute", "backend", "provider", "model", "alias", "tags")
_UPSERT = (
    f"INSERT INTO usage ({', '.join(_KEY_COLUMNS + _COUNTERS)}) "
    f"VALUES ({', '.join('?' * (len(_KEY_COLUMNS) + len(_COUNTERS)))}) "
    f"ON CONFLICT ({', '.join(_KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in _COUNTERS)
)


def parse_since(text: str) -> float:
    """`90s`, `30m`, `3h`, `1d`, `2w` → seconds (decimals allowed: `1.5h`)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(
            f"cannot read {text!r} as a duration: use a number and a unit (s, m, h, d, w), e.g. 90s, 30m, 3h, 1d, 2w"
        )
    seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2].lower()]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than zero")
    return seconds


def read_usage(
    path: str | os.PathLike[str],
    *,
    since_s: float | None = None,
    group_by: Sequence[str] = ("backend", "model", "tag"),
    clock: Callable[[], float] = time.time,
) -> list[UsageRow]:
    """The totals in a usage file (every process and run that wrote to it), optionally only the last `since_s`.

    Synchronous, for the CLI. A missing file raises `FileNotFoundError`; a file that is not a usage
    file raises `ValueError`; one that cannot be read raises `OSError`; each names the file.
    """
    groups = _check_group_by(group_by)
    start = _window_start(since_s, clock)
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(
            errno.ENOENT, "no usage file (is usage.path set, and has a router run with it?)", str(file)
        )
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise OSError(f"cannot open usage file {file}: {exc}") from exc
    try:
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'").fetchone() is None:
                raise ValueError(f"{file} is not an inference-router usage file (it has no usage table)")
            sums = ", ".join(f"SUM({name})" for name in _COUNTERS)
            keys = ", ".join(_KEY_COLUMNS[1:])
            where = "" if start is None else f"WHERE minute >= {start:d}"
            stored = conn.execute(f"SELECT {keys}, {sums} FROM usage {where} GROUP BY {keys}").fetchall()
        except sqlite3.DatabaseError as exc:
            raise OSError(f"cannot read usage file {file}: {exc}") from exc
    finally:
        conn.close()
    totals: list[tuple[_CallKey, _Counts]] = []
    for backend, provider, model, alias, tags_json, *values in stored:
        tags = tuple(str(tag) for tag in json.loads(tags_json))
        totals.append(((backend, provider, model, alias, tags), _Counts(*values)))
    return _group(totals, groups)


class UsageLedger(Observer):
    """Adds up every finished call (see the module docstring for who gets what), in memory and optionally in a file.

    `path`: a SQLite file the totals are added to, created with its folder on the first flush.
    `flush_s`: how often `run()` writes pending totals. `clock`: wall-clock time, for the
    per-minute buckets (tests pass a fake one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        flush_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        keep_minutes_s: float = 7 * 86400,
    ) -> None:
        if not flush_s > 0:
            raise ValueError(f"flush_s must be more than zero, not {flush_s!r}")
        self.keep_minutes_s = keep_minutes_s
        """In memory, minute buckets older than this are folded into one (`since_s` reaches this far back)."""
        self._newest_minute = 0
        self.path = None if path is None else Path(path)
        self.flush_s = flush_s
        self._clock = clock
        self._totals: dict[_Key, _Counts] = {}
        self._pending: dict[_Key, _Counts] = {}
        """Deltas not yet in the file (only with a path)."""
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()  # the process that opened `_conn`
        self._owner = os.getpid()  # the process whose calls `_totals` and `_pending` hold
        self._conn_lock = threading.Lock()  # one worker thread on the connection at a time

    def __repr__(self) -> str:
        return f"UsageLedger({None if self.path is None else str(self.path)!r})"

    # -- the Observer interface ----------------------------------------------------------------

    def call_succeeded(self, call: CallInfo) -> None:
        record = call.record
        served = _Counts(requests=1)
        if record.cached:
            served.cache_hits = 1
            deployment = (CACHE_BACKEND, CACHE_BACKEND, record.requested_model)
        else:
            _add_spend(served, record)
            if record.backend is not None:
                deployment = (record.backend, record.provider or "", record.model or "")
            else:  # not expected for a served call; keep the request rather than drop it
                deployment = _last_sent(record)
        self._count(record, deployment, served)

    def call_failed(self, call: CallInfo, error: BaseException) -> None:
        record = call.record
        failed = _Counts(requests=1, failures=1)
        _add_spend(failed, record)
        self._count(record, _last_sent(record), failed)

    # -- queries -------------------------------------------------------------------------------

    def usage(
        self, *, group_by: Sequence[str] = ("backend", "model", "tag"), since_s: float | None = None
    ) -> list[UsageRow]:
        """This process's totals since the ledger was made; with `since_s`, only the last `since_s` seconds."""
        groups = _check_group_by(group_by)
        start = _window_start(since_s, self._clock)
        selected = (
            ((backend, provider, model, alias, tags), counts)
            for (minute, backend, provider, model, alias, tags), counts in self._totals.items()
            if start is None or minute >= start
        )
        return _group(selected, groups)

    # -- the file ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Add what arrived since the last flush to the file (no-op without a path); on failure, keep it and warn."""
        await self._flush()

    async def run(self) -> None:
        """Flush every `flush_s` seconds until cancelled (the router runs this in the background)."""
        if self.path is None:
            await anyio.sleep_forever()  # nothing to write, ever
        else:
            while True:
                await anyio.sleep(self.flush_s)
                await self._flush()

    async def aclose(self) -> None:
        """Write what is pending (a warning says how much was lost if that fails) and close the file."""
        with anyio.CancelScope(shield=True):  # bounded by the busy timeout; closing must not lose the totals
            if not await self._flush():
                logger.warning("usage: %d pending usage rows not written to %s", len(self._pending), self.path)
            self._pending.clear()
            if self._conn is not None:
                await anyio.to_thread.run_sync(self._close)

    async def _flush(self) -> bool:
        """Write the pending deltas; True when nothing is left pending."""
        self._forget_if_forked()
        if self.path is None or not self._pending:
            return True
        batch, self._pending = self._pending, {}
        rows = [(*key[:5], json.dumps(list(key[5])), *counts.values()) for key, counts in batch.items()]
        try:
            await anyio.to_thread.run_sync(self._write, rows)
        except BaseException as exc:
            for key, counts in batch.items():  # put them back, with whatever arrived meanwhile
                self._pending.setdefault(key, _Counts()).add(counts)
            if not isinstance(exc, (sqlite3.Error, OSError)):
                raise
            logger.warning("usage: cannot write totals to %s (%s); will retry at the next flush", self.path, exc)
            return False
        return True

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """Add `rows` to the stored counters in one transaction. Worker thread only."""
        with self._conn_lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_UPSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError):
                self._drop_connection()  # reopen next time: the file may have been fixed or replaced
                raise

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opening (and if need be creating) the file first. Worker thread only."""
        if self._conn is not None:
            if self._pid == os.getpid():
                return self._conn
            self._conn = None  # inherited across fork(): SQLite connections must not be shared, so leave it be
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"made by a newer inference-router (schema {version} > {_SCHEMA_VERSION})")
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;")
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _close(self) -> None:
        with self._conn_lock:
            self._drop_connection()

    # -- counting ------------------------------------------------------------------------------

    def _count(self, record: RouteRecord, deployment: _Deployment, call: _Counts) -> None:
        """Add one finished call: `call` on `deployment`, and each sent attempt on its own deployment."""
        self._forget_if_forked()
        minute = int(self._clock() // 60) * 60
        if minute > self._newest_minute:  # once a minute at most: keep memory bounded in a long-lived process
            self._newest_minute = minute
            self._fold_older_than(minute - self.keep_minutes_s)
        alias = record.alias or record.requested_model
        tags = tuple(sorted(set(record.tags)))
        deltas: list[tuple[_Deployment, _Counts]] = [(deployment, call)]
        for attempt in record.attempts:
            if attempt.sent:
                deltas.append(
                    (_deployment(attempt), _Counts(attempts=1, errors=int(attempt.outcome not in _NOT_ERRORS)))
                )
        for (backend, provider, model), counts in deltas:
            key: _Key = (minute, backend, provider, model, alias, tags)
            self._totals.setdefault(key, _Counts()).add(counts)
            if self.path is not None:
                self._pending.setdefault(key, _Counts()).add(counts)

    def _fold_older_than(self, horizon: float) -> None:
        """Merge in-memory minute buckets before `horizon` into minute 0: totals stay whole, memory bounded."""
        old = [key for key in self._totals if 0 < key[0] < horizon]
        for key in old:
            self._totals.setdefault((0, *key[1:]), _Counts()).add(self._totals.pop(key))

    def _forget_if_forked(self) -> None:
        """In a child process, drop the totals inherited from the parent: they are the parent's to write."""
        if self._owner != os.getpid():
            self._owner = os.getpid()
            self._totals.clear()
            self._pending.clear()


def _deployment(attempt: Attempt) -> _Deployment:
    return (attempt.backend, attempt.provider, attempt.model)


def _last_sent(record: RouteRecord) -> _Deployment:
    """The deployment of the last attempt that was sent, or `(none)` when nothing was."""
    for attempt in reversed(record.attempts):
        if attempt.sent:
            return _deployment(attempt)
    return (NO_BACKEND, NO_BACKEND, record.requested_model)


def _add_spend(counts: _Counts, record: RouteRecord) -> None:
    """Tokens and cost the record carries."""
    usage = record.usage
    if usage is not None:
        counts.prompt_tokens = usage.prompt_tokens
        counts.completion_tokens = usage.completion_tokens
        counts.cached_tokens = usage.cached_prompt_tokens
        counts.reasoning_tokens = usage.reasoning_tokens
    counts.cost_usd = record.cost_usd or 0.0


def _check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    if isinstance(group_by, str):  # "tag" would otherwise read as ("t", "a", "g")
        group_by = (group_by,)
    unknown = [key for key in group_by if key not in GROUP_KEYS]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"cannot group usage by {names}; group by any of: {', '.join(GROUP_KEYS)}")
    return tuple(key for key in GROUP_KEYS if key in group_by)


def _window_start(since_s: float | None, clock: Callable[[], float]) -> int | None:
    """The first minute bucket inside the last `since_s` seconds (None: no limit)."""
    if since_s is None:
        return None
    if not since_s >= 0:
        raise ValueError(f"since_s must be zero or more, not {since_s!r}")
    return int((clock() - since_s) // 60) * 60


def _group(totals: Iterable[tuple[_CallKey, _Counts]], groups: tuple[str, ...]) -> list[UsageRow]:
    """Add `totals` up by the `groups` key fields; by `tag`, a call counts under each of its tags."""
    grouped: dict[tuple[str | None, ...], _Counts] = {}
    for (backend, provider, model, alias, tags), counts in totals:
        fields_of = {"backend": backend, "provider": provider, "model": model, "alias": alias}
        fields_of["key"] = next((t.removeprefix(KEY_TAG) for t in tags if t.startswith(KEY_TAG)), "")
        for tag in (tags or ("",)) if "tag" in groups else (None,):
            fields_of["tag"] = tag or ""
            key = tuple(fields_of[name] if name in groups else None for name in GROUP_KEYS)
            grouped.setdefault(key, _Counts()).add(counts)
    rows = [_row(key, counts) for key, counts in grouped.items()]
    rows.sort(key=lambda row: (-row.cost_usd, *(getattr(row, name) or "" for name in GROUP_KEYS)))
    return rows


def _row(key: tuple[str | None, ...], counts: _Counts) -> UsageRow:
    backend, provider, model, alias, tag, caller = key
    totals: dict[str, Any] = {name: getattr(counts, name) for name in _COUNTERS}
    return UsageRow(backend=backend, provider=provider, model=model, alias=alias, tag=tag, key=caller, **totals)
