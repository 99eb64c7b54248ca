"""A Server-Sent Events reader that keeps the deadlines honest.

Comment lines (`: keep-alive`, llama.cpp's `:` pings) are dropped without counting as progress:
the caller passes an absolute deadline for the next *data* event, so a provider that only
sends keep-alives still runs out of time. Bytes already buffered are parsed without any I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

DONE = b"[DONE]"


MAX_LINE_BYTES = 32 * 1024 * 1024
"""The longest SSE line read (32 MiB: far beyond any chunk a model sends); a longer one is refused
rather than held in memory without end."""


class SSEDeadline(Exception):
    """No data event arrived before the deadline."""


class SSELineTooLong(Exception):
    """A line grew past `MAX_LINE_BYTES` without ending."""


class SSEReader:
    """Pull `data:` payloads out of a byte stream, one event at a time.

    Lines are parsed as events are asked for, not as bytes arrive: a read that brought a whole
    stream (a fast provider's hundreds of chunks in one TCP read) is held once, as it came, rather
    than also as a queue of every event cut out of it."""

    __slots__ = ("_buffer", "_chunks", "_data", "_event_type", "_pos", "_tail", "_tail_bytes", "done", "eof")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._pos = 0
        """Where the unparsed part of `_buffer` starts."""
        self._tail: list[bytes] = []
        """Pieces of a line still going (joined once, when it ends: a long line costs no quadratic copying)."""
        self._tail_bytes = 0
        self._data: list[bytes] = []
        self._event_type = b""
        self.eof = False
        """The byte stream ended."""
        self.done = False
        """`data: [DONE]` was received."""

    def _parsed(self) -> tuple[bytes, bytes] | None:
        """Parse buffered lines until an event completes; None (keeping a partial last line) when the
        buffer runs out first."""
        buffer = self._buffer
        pos = self._pos
        find = buffer.find
        while True:
            end = find(b"\n", pos)
            if end < 0:
                self._buffer = buffer[pos:] if pos else buffer
                self._pos = 0
                return None
            event = self._line(buffer[pos:end])
            pos = end + 1
            if event is not None:
                self._pos = pos
                return event

    def _take(self, chunk: bytes) -> None:
        """Add a read to the buffer (which holds at most a partial line now)."""
        if b"\n" not in chunk:
            self._tail_bytes += len(chunk)
            if len(self._buffer) + self._tail_bytes > MAX_LINE_BYTES:
                raise SSELineTooLong(f"an SSE line longer than {MAX_LINE_BYTES} bytes")
            self._tail.append(chunk)
        elif self._tail:
            self._buffer = b"".join((self._buffer, *self._tail, chunk))
            self._tail.clear()
            self._tail_bytes = 0
        else:
            self._buffer += chunk

    def _line(self, line: bytes) -> tuple[bytes, bytes] | None:
        """Take one line; the event it completes (a blank line after data), if any."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            event = None
            if self._data:
                event = (self._event_type, b"\n".join(self._data))
                self._data = []
            self._event_type = b""
            return event
        if line[0] == 58:  # ":" starts a comment: keep-alive, never progress
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event_type = value
        return None

    async def drain(self, deadline: float) -> None:
        """Read and discard the rest of the byte stream, until its end or `deadline`."""
        with anyio.CancelScope(deadline=deadline):
            async for _ in self._chunks:
                pass
        self.eof = True

    async def next(self, deadline: float) -> tuple[bytes, bytes] | None:
        """The next (event type, data) pair, or None after `[DONE]` or the end of the stream.

        Raises SSEDeadline when nothing arrives by `deadline` (anyio clock).
        """
        while True:
            event = self._parsed()
            if event is not None:
                break
            if self.eof or self.done:
                return None
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    # the end closes a last line and a last event that lacked their newlines: the
                    # parser judges such an event (a cut JSON payload fails there)
                    self.eof = True
                    chunk = b"\n\n"
            if scope.cancelled_caught:
                raise SSEDeadline
            self._take(chunk)
        if event[1] == DONE:
            self.done = True
            return None
        return event
