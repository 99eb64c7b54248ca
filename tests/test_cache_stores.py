"""The CacheStore contract, run against the SQLite store (a temp file) and the Redis store (a real
`redis-server` on loopback), plus what each backend must do when its backend breaks."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from router.cache.redis import RedisStore, redact_url
from router.cache.sqlite import SqliteStore
from router.cache.store import CacheStore, CacheUnavailable
from tests.redis_server import RedisServer, redis_fixture

pytestmark = pytest.mark.anyio

redis_server = redis_fixture(
    scope="module"
)  # shared (emptied by each test that needs it empty); killing tests get their own
redis_server_with_password = redis_fixture(password="s3cret-pw")

BLOBS = [b"", b"\x00", bytes(range(256)), b"\xff\xfe" * 50_000, "héllo ✓".encode()]


@dataclass
class Backend:
    name: str
    make: Callable[[], CacheStore]


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "cache.sqlite3"
        return Backend("sqlite", lambda: SqliteStore(path))
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    url = server.url
    return Backend("redis", lambda: RedisStore(url))


@pytest.fixture
async def make_store(backend: Backend) -> AsyncIterator[Callable[[], CacheStore]]:
    """Stores on the test's backend (several may share it, as several processes would), closed at the end."""
    made: list[CacheStore] = []

    def make() -> CacheStore:
        store = backend.make()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


# -- the contract, on both stores --------------------------------------------------------------


async def test_binary_values_roundtrip(make_store: Callable[[], CacheStore]) -> None:
    store = make_store()
    assert await store.get("missing") is None
    for i, blob in enumerate(BLOBS):
        await store.set(f"k{i}", blob, 30)
    for i, blob in enumerate(BLOBS):
        got = await store.get(f"k{i}")
        assert type(got) is bytes and got == blob
    await store.set("k0", b"replaced", 30)
    assert await store.get("k0") == b"replaced"
    await store.delete("k0")
    assert await store.get("k0") is None
    await store.delete("k0")  # absent: no error
    assert await make_store().get("k2") == bytes(range(256))  # another store on the same backend sees it


async def test_entries_expire(make_store: Callable[[], CacheStore]) -> None:
    store = make_store()
    await store.set("short", b"a", 0.2)
    await store.set("long", b"b", 30)
    await store.set("zero", b"c", 0)  # already expired: never visible
    assert await store.get("short") == b"a"
    assert await store.get("zero") is None
    await anyio.sleep(0.3)
    assert await store.get("short") is None
    assert await store.get("long") == b"b"
    await store.set("short", b"again", 30)  # an expired key can be written again
    assert await store.get("short") == b"again"


async def test_lock_is_exclusive_and_released(make_store: Callable[[], CacheStore]) -> None:
    a, b = make_store(), make_store()
    assert await a.acquire("job", 30) is True
    assert await a.acquire("job", 30) is False  # held, even by the same store
    assert await b.acquire("job", 30) is False
    await b.release("job")  # b doesn't hold it: must not drop a's lock
    assert await b.acquire("job", 30) is False
    assert await b.acquire("other", 30) is True  # locks are per key
    await a.release("job")
    assert await b.acquire("job", 30) is True
    await b.release("job")
    await b.release("job")  # twice: no error
    assert await a.acquire("job", 30) is True


async def test_expired_lock_is_taken_over(make_store: Callable[[], CacheStore]) -> None:
    a, b, c = make_store(), make_store(), make_store()
    assert await a.acquire("job", 0.2) is True
    assert await b.acquire("job", 30) is False
    await anyio.sleep(0.3)  # a "died" holding it
    assert await b.acquire("job", 30) is True
    await a.release("job")  # a's stale release must not drop b's lock
    assert await c.acquire("job", 30) is False
    await b.release("job")
    assert await c.acquire("job", 30) is True


async def test_locks_and_values_do_not_mix(make_store: Callable[[], CacheStore]) -> None:
    store = make_store()
    assert await store.acquire("k", 30) is True
    assert await store.get("k") is None
    await store.set("k2", b"v", 30)
    assert await store.acquire("k2", 30) is True
    await store.release("k")
    assert await store.get("k2") == b"v"


async def test_closed_store_is_unavailable(make_store: Callable[[], CacheStore]) -> None:
    store = make_store()
    await store.set("k", b"v", 30)
    await store.aclose()
    with pytest.raises(CacheUnavailable, match="closed"):
        await store.get("k")
    await store.aclose()  # twice: no error


async def test_concurrent_acquires_have_one_winner(make_store: Callable[[], CacheStore]) -> None:
    """Eight stores (eight SQLite connections, each in its own thread / eight Redis clients) race for one lock."""
    stores = [make_store() for _ in range(8)]
    for store in stores:  # connected and ready, so the acquires below really overlap
        await store.get("warm-up")
    won: list[bool] = []

    async def take(store: CacheStore) -> None:
        won.append(await store.acquire("race", 30))

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(take, store)
    assert sorted(won) == [False] * 7 + [True]


PARENT_VALUE = b"\x01\x02parent"
CHILD = """
import sys
import anyio
from router.cache.redis import RedisStore
from router.cache.sqlite import SqliteStore

async def main() -> None:
    print("redis imported:", "redis" in sys.modules)  # `router.cache.redis` itself must not import redis
    for store in ({ctors}):
        seen = await store.get("from-parent")
        await store.set("from-child", bytes([0, 255, 7]), 30)
        won = await store.acquire("held-by-child", 30)  # never released: the lock outlives this process
        await store.aclose()
        print(seen.hex() if seen is not None else "none", won)

anyio.run(main)
"""


async def test_processes_share_the_stores(tmp_path: Path, redis_server: RedisServer) -> None:
    """Another OS process reads what this one wrote to the SQLite file and to Redis, writes what
    this one reads, and takes a lock this one then can't. (One test for both stores: a child
    process pays about two seconds of imports, so one child serves both.)"""
    path = tmp_path / "cache.sqlite3"
    stores: list[CacheStore] = [SqliteStore(path), RedisStore(redis_server.url)]
    code = textwrap.dedent(CHILD.format(ctors=f"SqliteStore({str(path)!r}), RedisStore({redis_server.url!r})"))
    try:
        for store in stores:
            await store.set("from-parent", PARENT_VALUE, 30)
        with anyio.fail_after(30):
            done = await anyio.run_process([sys.executable, "-c", code], check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        lines = done.stdout.decode().splitlines()
        assert lines == ["redis imported: False"] + [f"{PARENT_VALUE.hex()} True"] * 2
        for store in stores:
            assert await store.get("from-child") == bytes([0, 255, 7]), store
            assert await store.acquire("held-by-child", 30) is False, store
    finally:
        for store in stores:
            await store.aclose()


# -- SQLite --------------------------------------------------------------------------------------


async def test_sqlite_survives_restart_and_purges(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "cache.sqlite3"  # folders are made
    store = SqliteStore(path, purge_interval_s=0)
    await store.set("keep", b"kept", 30)
    await store.set("gone", b"x", 0.05)
    await store.aclose()
    reopened = SqliteStore(path, purge_interval_s=0)
    try:
        assert await reopened.get("keep") == b"kept"
        await anyio.sleep(0.1)
        await reopened.set("new", b"y", 30)  # a write purges expired rows
        with sqlite3.connect(path) as raw:
            assert sorted(k for (k,) in raw.execute("SELECT key FROM entries")) == ["keep", "new"]
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await reopened.aclose()


async def test_sqlite_does_not_block_the_loop(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.sqlite3")
    ticks = 0
    writing = True

    async def ticker() -> None:
        nonlocal ticks
        while writing:
            ticks += 1
            await anyio.sleep(0)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            for i in range(200):
                await store.set(f"k{i}", b"v" * 1000, 30)
            writing = False
        assert ticks >= 100, f"the loop ran only {ticks} times during 200 writes: SQLite blocks it"
    finally:
        await store.aclose()


async def test_sqlite_waits_for_another_writer_off_the_loop(tmp_path: Path) -> None:
    """Another process's write lock makes a write wait (in its thread), not the loop; past the busy timeout it fails."""
    path = tmp_path / "cache.sqlite3"
    store = SqliteStore(path, busy_timeout_s=5)
    impatient = SqliteStore(path, busy_timeout_s=0.2)
    reader = SqliteStore(path)
    await store.set("warm", b"up", 30)
    await impatient.get("warm")
    await reader.get("warm")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        finished = anyio.Event()

        async def write() -> None:
            await store.set("k", b"v", 30)
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            started = time.monotonic()
            await anyio.sleep(0.3)
            assert time.monotonic() - started < 0.5, "the event loop was blocked"
            assert not finished.is_set()
            assert await reader.get("warm") == b"up"  # WAL: reads go on while the file is write-locked
            with pytest.raises(CacheUnavailable, match=r"cache\.sqlite3.*locked"):
                await impatient.acquire("lock", 30)
            holder.execute("COMMIT")
            with anyio.fail_after(2):
                await finished.wait()
        assert await store.get("k") == b"v"
    finally:
        holder.close()
        for each in (store, impatient, reader):
            await each.aclose()


async def test_sqlite_unusable_file_is_unavailable(tmp_path: Path) -> None:
    # Tests may run as root, who can write through file permissions: use paths no one can open.
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 200)
    for path in (not_a_dir / "cache.sqlite3", tmp_path, corrupt):
        store = SqliteStore(path)
        with pytest.raises(CacheUnavailable) as caught:
            await store.set("k", b"v", 30)
        assert str(path) in str(caught.value)
        with pytest.raises(CacheUnavailable):
            await store.get("k")
        await store.aclose()


# -- Redis ---------------------------------------------------------------------------------------


async def test_redis_keys_are_prefixed(redis_server: RedisServer) -> None:
    import redis.asyncio

    a = RedisStore(redis_server.url)
    b = RedisStore(redis_server.url, prefix="other-app:")
    redis_server.flush()
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await a.set("k", b"a", 30)
        await a.acquire("k", 30)
        assert await b.get("k") is None
        assert await b.acquire("k", 30) is True
        keys = sorted(await raw.keys("*"))
        assert keys == ["inference-router:lock:k", "inference-router:v:k", "other-app:lock:k"]
        assert 0 < await raw.pttl("inference-router:v:k") <= 30_000
    finally:
        await a.aclose()
        await b.aclose()
        await raw.aclose()


async def test_redis_down_is_unavailable_fast_then_reconnects(redis_server_with_password: RedisServer) -> None:
    server = redis_server_with_password
    store = RedisStore(server.url)
    try:
        await store.set("k", b"v", 30)
        assert await store.acquire("lock", 30) is True
        await store.release("lock")  # loads the release script, which a restarted server won't have

        server.kill()
        started = time.monotonic()
        for call in (
            store.get("k"),
            store.set("k", b"v", 30),
            store.delete("k"),
            store.acquire("lock", 30),
        ):
            with pytest.raises(CacheUnavailable) as caught:
                await call
            message = str(caught.value)
            assert f"127.0.0.1:{server.port}" in message
            assert "s3cret-pw" not in message and "***" in message
        assert time.monotonic() - started < 1.5

        server.start()  # same port, empty (nothing persisted)
        assert await store.get("k") is None
        await store.set("k", b"back", 30)
        assert await store.get("k") == b"back"
        assert await store.acquire("lock", 30) is True
        await store.release("lock")  # NOSCRIPT → the script is loaded again
        assert await store.acquire("lock", 30) is True
    finally:
        await store.aclose()


async def test_redis_hung_server_times_out(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=0.3)
    assert redis_server.pid is not None
    try:
        await store.set("k", b"v", 30)
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(CacheUnavailable, match=r"(?i)timeout"):
                await store.get("k")
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert await store.get("k") == b"v"
    finally:
        await store.aclose()


async def test_redis_nothing_listening_is_unavailable() -> None:
    import socket

    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisStore(f"redis://user:pw@127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(CacheUnavailable, match=rf"redis://user:\*\*\*@127\.0\.0\.1:{port}/0"):
        await store.get("k")
    assert time.monotonic() - started < 1.5
    await store.aclose()


def test_redact_url() -> None:
    assert redact_url("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:secret@host/1") == "rediss://user:***@host/1"
    assert redact_url("redis://user@host/1") == "redis://user@host/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url("unix:///run/redis.sock?db=0&password=secret") == "unix:///run/redis.sock?db=0&password=***"
    assert "secret" not in repr(RedisStore("redis://:secret@127.0.0.1:1/0"))
