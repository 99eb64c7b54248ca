"""Usage accounting: who each call is attributed to, time windows, and totals shared through one SQLite file."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import pytest

from providers import Usage
from router.observe.usage import GROUP_KEYS, UsageLedger, UsageRow, parse_since, read_usage
from router.path.events import CallInfo
from router.path.record import Attempt, RouteRecord

T0 = 1_800_000_000.0  # a whole minute, so bucket arithmetic in the tests is exact
DAY = 86400.0


class FakeClock:
    """Wall-clock time the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def attempt(backend: str, outcome: str = "ok", *, sent: bool = True) -> Attempt:
    return Attempt(backend, f"{backend}-provider", f"{backend}-model", outcome, 0.1, sent=sent)


def served(
    backend: str,
    *tried: Attempt,
    tags: list[str] | None = None,
    cost: float | None = 0.01,
    usage: Usage | None = None,
    alias: str | None = "chat",
) -> CallInfo:
    """A call served by `backend` after the attempts in `tried` (its own attempt is appended)."""
    record = RouteRecord(requested_model="chat", alias=alias, policy="cheapest", stream=False, tags=list(tags or []))
    record.backend, record.provider, record.model = backend, f"{backend}-provider", f"{backend}-model"
    record.attempts = [*tried, attempt(backend)]
    record.usage = usage if usage is not None else Usage(100, 20, 120, cached_prompt_tokens=40, reasoning_tokens=5)
    record.cost_usd = cost
    return CallInfo(record=record, request={})


def failed(*tried: Attempt, tags: list[str] | None = None) -> CallInfo:
    record = RouteRecord(requested_model="chat", alias="chat", policy="cheapest", stream=False, tags=list(tags or []))
    record.attempts = list(tried)
    return CallInfo(record=record, request={})


def cache_hit(model: str = "chat") -> CallInfo:
    record = RouteRecord(requested_model=model, alias=model, policy="cheapest", stream=False, cached=True, cost_usd=0.0)
    return CallInfo(record=record, request={})


def by(rows: list[UsageRow], field: str = "backend") -> dict[str | None, UsageRow]:
    return {getattr(row, field): row for row in rows}


def test_fallback_call_counts_the_failed_attempt_on_its_deployment_and_the_call_on_the_server() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(served("b", attempt("a", "rate_limited"), attempt("c", "circuit_open", sent=False)))

    rows = by(ledger.usage(group_by=("backend",)))
    assert set(rows) == {"a", "b"}  # the unsent attempt to c counts nowhere
    a, b = rows["a"], rows["b"]
    assert (a.requests, a.attempts, a.errors, a.failures, a.cost_usd, a.prompt_tokens) == (0, 1, 1, 0, 0.0, 0)
    assert (b.requests, b.attempts, b.errors, b.failures) == (1, 1, 0, 0)
    assert (b.prompt_tokens, b.completion_tokens, b.cached_tokens, b.reasoning_tokens) == (100, 20, 40, 5)
    assert b.cost_usd == pytest.approx(0.01)
    assert b.model is None and b.tag is None  # not grouped by them
    assert ledger.usage(group_by=("backend",))[0].backend == "b"  # cost desc


def test_hedge_loser_and_cancelled_attempts_are_not_errors() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(served("b", attempt("a", "hedge_lost"), attempt("c", "cancelled")))
    rows = by(ledger.usage(group_by=("backend",)))
    assert {name: (row.attempts, row.errors, row.requests) for name, row in rows.items()} == {
        "a": (1, 0, 0),
        "b": (1, 0, 1),
        "c": (1, 0, 0),
    }


def test_cache_hit_counts_a_request_on_the_cache_with_no_tokens_or_cost() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(cache_hit("fast"))
    [row] = ledger.usage(group_by=("backend", "provider", "model", "alias"))
    assert (row.backend, row.provider, row.model, row.alias) == ("(cache)", "(cache)", "fast", "fast")
    assert (row.requests, row.cache_hits, row.attempts, row.prompt_tokens, row.cost_usd) == (1, 1, 0, 0, 0.0)


def test_failed_call_lands_on_the_last_sent_attempt_or_on_none() -> None:
    ledger = UsageLedger()
    ledger.call_failed(failed(attempt("a", "timeout"), attempt("b", "server_error")), RuntimeError("boom"))
    ledger.call_failed(failed(attempt("a", "circuit_open", sent=False)), RuntimeError("nothing sent"))

    rows = by(ledger.usage(group_by=("backend", "model")))
    a, b, none = rows["a"], rows["b"], rows["(none)"]
    assert (a.requests, a.failures, a.attempts, a.errors) == (0, 0, 1, 1)
    assert (b.requests, b.failures, b.attempts, b.errors) == (1, 1, 1, 1)
    assert (none.requests, none.failures, none.attempts, none.model) == (1, 1, 0, "chat")


def test_broken_stream_failure_still_counts_what_was_billed() -> None:
    ledger = UsageLedger()
    call = failed(attempt("a", "stream_broken"))
    call.record.backend, call.record.usage, call.record.cost_usd = "a", Usage(50, 7, 57), 0.002
    ledger.call_failed(call, RuntimeError("stream broke"))
    [row] = ledger.usage(group_by=("backend",))
    assert (row.requests, row.failures, row.errors, row.prompt_tokens, row.completion_tokens) == (1, 1, 1, 50, 7)
    assert row.cost_usd == pytest.approx(0.002)


def test_tags_expand_when_grouped_by_tag_and_never_double_count_otherwise() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(served("a", tags=["x", "y", "x"], cost=1.0))  # a repeated tag counts once
    ledger.call_succeeded(served("a", tags=["y"], cost=2.0))
    ledger.call_succeeded(served("a", cost=4.0))

    tags = by(ledger.usage(group_by=("tag",)), "tag")
    assert {tag: (row.requests, row.cost_usd) for tag, row in tags.items()} == {
        "": (1, 4.0),
        "y": (2, 3.0),
        "x": (1, 1.0),
    }
    assert [row.tag for row in ledger.usage(group_by=("tag",))] == ["", "y", "x"]  # cost desc

    [total] = ledger.usage(group_by=("backend",))
    assert (total.requests, total.attempts, total.prompt_tokens, total.cost_usd) == (3, 3, 300, 7.0)
    [everything] = ledger.usage(group_by=())
    assert everything.requests == 3 and everything.backend is None

    default = ledger.usage()  # backend, model, tag
    assert {(row.backend, row.model, row.tag) for row in default} == {("a", "a-model", t) for t in ("", "x", "y")}


def test_alias_falls_back_to_the_requested_model() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(served("a", alias=None))
    assert [row.alias for row in ledger.usage(group_by=("alias",))] == ["chat"]


def test_since_keeps_only_recent_minutes() -> None:
    clock = FakeClock()
    ledger = UsageLedger(clock=clock)
    ledger.call_succeeded(served("old", cost=1.0))
    clock.now += 600
    ledger.call_succeeded(served("new", cost=2.0))
    clock.now += 30

    assert [row.backend for row in ledger.usage(group_by=("backend",), since_s=300)] == ["new"]
    assert [row.backend for row in ledger.usage(group_by=("backend",), since_s=630)] == ["new", "old"]
    assert [row.backend for row in ledger.usage(group_by=("backend",))] == ["new", "old"]
    assert ledger.usage(group_by=("backend",), since_s=0) == ledger.usage(group_by=("backend",), since_s=10)


def test_old_minutes_are_folded_so_memory_stays_bounded_and_totals_whole() -> None:
    clock = FakeClock()
    ledger = UsageLedger(clock=clock, keep_minutes_s=3600)
    for _ in range(180):  # three hours of one call a minute
        ledger.call_succeeded(served("a", cost=1.0))
        clock.now += 60
    assert len(ledger._totals) <= 62  # the last hour's minutes, and one bucket for everything before
    (total,) = ledger.usage(group_by=())
    assert total.requests == 180 and total.cost_usd == pytest.approx(180.0)
    (recent,) = ledger.usage(group_by=(), since_s=1800)
    assert recent.requests == 30


def test_unknown_group_key_names_the_known_ones() -> None:
    ledger = UsageLedger()
    with pytest.raises(ValueError, match="'deployment'") as caught:
        ledger.usage(group_by=("backend", "deployment"))
    assert all(key in str(caught.value) for key in GROUP_KEYS)
    assert [row.tag for row in UsageLedger().usage(group_by="tag")] == []  # a bare string is one key


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("3h", 10800), ("1d", 86400), ("2w", 1209600), (" 1.5H ", 5400), (".5m", 30)],
)
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "d", "1y", "-1d", "1 day", "0s", "1d2h"])
def test_parse_since_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_since(text)


def test_row_to_dict() -> None:
    ledger = UsageLedger()
    ledger.call_succeeded(served("a"))
    data = ledger.usage(group_by=("backend",))[0].to_dict()
    assert data["backend"] == "a" and data["model"] is None and data["requests"] == 1
    assert set(data) == {
        *GROUP_KEYS,
        "requests",
        "attempts",
        "errors",
        "failures",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
        "cache_hits",
    }


@pytest.mark.anyio
async def test_two_processes_add_up_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "usage.db"
    clock = FakeClock()
    first, second = UsageLedger(path, clock=clock), UsageLedger(path, clock=clock)
    first.call_succeeded(served("b", attempt("a", "timeout"), cost=0.5))
    second.call_succeeded(served("b", cost=0.25))
    second.call_succeeded(cache_hit())
    await first.flush()
    await second.flush()
    await second.flush()  # nothing new: adds nothing

    rows = by(read_usage(path, since_s=DAY, group_by=("backend",), clock=clock))
    assert (rows["b"].requests, rows["b"].attempts, rows["b"].prompt_tokens) == (2, 2, 200)
    assert rows["b"].cost_usd == pytest.approx(0.75)
    assert (rows["a"].attempts, rows["a"].errors, rows["a"].requests) == (1, 1, 0)
    assert (rows["(cache)"].requests, rows["(cache)"].cache_hits) == (1, 1)

    first.call_succeeded(served("b", cost=1.0))  # only the delta since the last flush is written
    await first.aclose()
    await second.aclose()
    rows = by(read_usage(path, group_by=("backend",), clock=clock))
    assert rows["b"].requests == 3 and rows["b"].cost_usd == pytest.approx(1.75)
    assert rows["b"].to_dict() == by(read_usage(path, since_s=60, group_by=("backend",), clock=clock))["b"].to_dict()


@pytest.mark.anyio
async def test_the_file_keeps_tags_and_minutes(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    clock = FakeClock(T0 - 2 * DAY)
    ledger = UsageLedger(path, clock=clock)
    ledger.call_succeeded(served("a", tags=["old"], cost=1.0))
    clock.now = T0
    ledger.call_succeeded(served("a", tags=["x", "y"], cost=2.0))
    await ledger.aclose()

    recent = read_usage(path, since_s=DAY, group_by=("tag",), clock=clock)
    assert {(row.tag, row.requests, row.cost_usd) for row in recent} == {("x", 1, 2.0), ("y", 1, 2.0)}
    [total] = read_usage(path, since_s=DAY, group_by=("backend",), clock=clock)
    assert (total.requests, total.cost_usd) == (1, 2.0)
    [all_time] = read_usage(path, group_by=("backend",), clock=clock)
    assert (all_time.requests, all_time.cost_usd) == (2, 3.0)
    conn = sqlite3.connect(path)  # only counters: no request content
    columns = [row[1] for row in conn.execute("PRAGMA table_info(usage)")]
    conn.close()
    assert "messages" not in columns and columns[:6] == ["minute", "backend", "provider", "model", "alias", "tags"]


@pytest.mark.anyio
async def test_a_failed_flush_keeps_its_deltas_for_the_next(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "usage.db"
    path.mkdir()  # a directory where the file should be: SQLite cannot open it
    ledger = UsageLedger(path)
    ledger.call_succeeded(served("a", cost=1.0))
    with caplog.at_level(logging.WARNING, logger="router"):
        await ledger.flush()
    assert "cannot write totals" in caplog.text and str(path) in caplog.text

    ledger.call_succeeded(served("a", cost=2.0))  # arrives while the file is broken
    path.rmdir()
    await ledger.flush()
    [row] = read_usage(path, group_by=("backend",))
    assert (row.requests, row.cost_usd) == (2, 3.0)
    await ledger.aclose()
    [row] = read_usage(path, group_by=("backend",))
    assert row.requests == 2  # nothing written twice


@pytest.mark.anyio
async def test_run_flushes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    ledger = UsageLedger(path, flush_s=0.01)
    ledger.call_succeeded(served("a"))

    def written() -> bool:
        try:
            return bool(read_usage(path))
        except (FileNotFoundError, ValueError):  # not there yet, or created but its table not yet
            return False

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ledger.run)
        with anyio.fail_after(2):
            while not written():
                await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()
    await ledger.aclose()
    assert read_usage(path, group_by=())[0].requests == 1


@pytest.mark.anyio
async def test_without_a_path_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `usage.path` the totals stay in memory: no file appears, not even a default one in the cwd."""
    monkeypatch.chdir(tmp_path)  # where a relative default file would land
    ledger = UsageLedger()
    ledger.call_succeeded(served("a"))
    await ledger.flush()
    await ledger.aclose()
    assert ledger.usage(group_by=())[0].requests == 1
    assert list(tmp_path.iterdir()) == []


def test_reading_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(FileNotFoundError, match=r"nope\.db"):
        read_usage(path)
    assert not path.exists()  # reading never creates the file


def test_reading_a_file_that_is_not_a_usage_file(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="not an inference-router usage file"):
        read_usage(path)
