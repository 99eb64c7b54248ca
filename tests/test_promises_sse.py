"""The SSE reader under every stream: events as the SSE spec frames them, an honest end, and
deadlines that keep-alives do not reset (README "Streams", "stall_s")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from providers.sse import SSEDeadline, SSEReader

pytestmark = pytest.mark.anyio


def feed(*chunks: bytes | float) -> AsyncIterator[bytes]:
    """The byte chunks as a stream; a float sleeps that long first."""

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            if isinstance(chunk, float):
                await anyio.sleep(chunk)
            else:
                yield chunk

    return stream()


async def events(*chunks: bytes | float) -> tuple[list[tuple[bytes, bytes]], SSEReader]:
    reader = SSEReader(feed(*chunks))
    out = []
    while (event := await reader.next(anyio.current_time() + 2)) is not None:
        out.append(event)
    return out, reader


async def test_events_are_framed_by_blank_lines_across_chunk_boundaries() -> None:
    """Lines split anywhere between chunks, CRLF endings, multi-line data joined by a newline."""
    got, reader = await events(b'data: {"a"', b":1}\r\n\r\ndata: line one\ndata: line two\n", b"\ndata:tight\n\n")
    assert got == [(b"", b'{"a":1}'), (b"", b"line one\nline two"), (b"", b"tight")]
    assert reader.eof is True and reader.done is False


async def test_an_event_type_applies_to_its_own_event_only() -> None:
    """`event: error` names the next event (in-band errors); the type resets after it."""
    got, _ = await events(b"event: error\ndata: {}\n\ndata: after\n\n")
    assert got == [(b"error", b"{}"), (b"", b"after")]


async def test_comments_and_unknown_fields_are_not_events() -> None:
    """`: keep-alive` and `id:`/`retry:` lines carry no data."""
    got, _ = await events(b": keep-alive\n\n:\n\nid: 7\nretry: 10\n\ndata: x\n\n")
    assert got == [(b"", b"x")]


async def test_done_ends_the_stream_and_says_so() -> None:
    """`data: [DONE]` ends reading (nothing after it is returned) and sets `done`."""
    got, reader = await events(b"data: one\n\ndata: [DONE]\n\ndata: ignored\n\n")
    assert got == [(b"", b"one")]
    assert reader.done is True


async def test_a_last_event_without_its_blank_line_or_newline_is_kept() -> None:
    """A stream that ends mid-frame still yields what it sent (the parser then judges it); `eof` is set."""
    got, reader = await events(b"data: first\n\nevent: error\ndata: partial")
    assert got == [(b"", b"first"), (b"error", b"partial")]
    assert reader.eof is True
    got, _ = await events(b"data: a\ndata: b\n")
    assert got == [(b"", b"a\nb")]


async def test_keep_alives_do_not_reset_the_deadline() -> None:
    """Only data counts as progress: keep-alive comments until the deadline raise `SSEDeadline`."""
    reader = SSEReader(feed(*[x for _ in range(20) for x in (0.02, b": keep-alive\n\n")]))
    started = anyio.current_time()
    with pytest.raises(SSEDeadline):
        await reader.next(started + 0.15)
    assert anyio.current_time() - started < 0.3


async def test_drain_reads_the_rest_and_marks_the_end() -> None:
    """`drain` consumes what is left (so the connection can be reused) and sets `eof`."""
    consumed = []

    async def stream() -> AsyncIterator[bytes]:
        for chunk in (b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"):
            consumed.append(chunk)
            yield chunk

    reader = SSEReader(stream())
    assert await reader.next(anyio.current_time() + 1) == (b"", b"one")
    await reader.drain(anyio.current_time() + 1)
    assert len(consumed) == 3 and reader.eof is True
    assert await reader.next(anyio.current_time() + 1) is None


async def test_a_long_line_in_many_pieces_is_one_event_and_an_endless_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line split over many reads is joined once (no quadratic copying); one that grows past
    `MAX_LINE_BYTES` without ending is refused instead of held in memory without end."""
    import providers.sse as sse

    piece = b"x" * 1000
    got, _ = await events(b"data: ", *[piece] * 300, b"\n\ndata: next\n\n")
    assert got == [(b"", piece * 300), (b"", b"next")]
    monkeypatch.setattr(sse, "MAX_LINE_BYTES", 10_000)
    reader = SSEReader(feed(b"data: ok\n\ndata: ", *[piece] * 20))
    assert await reader.next(anyio.current_time() + 2) == (b"", b"ok")
    with pytest.raises(sse.SSELineTooLong):
        await reader.next(anyio.current_time() + 2)
