"""A Server-Sent Events reader that keeps the deadlines honest.

Comment lines (`: keep-alive`, llama.cpp's `:` pings) are dropped without counting as progress:
the caller passes an absolute deadline for the next *data* event, so a provider that only
sends keep-alives still runs out of time. Bytes already buffered are parsed without any I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import anyio

DONE = b"[DONE]"


class SSEDeadline(Exception):
    """No data event arrived before the deadline."""


class SSEReader:
    """Pull `data:` payloads out of a byte stream, one event at a time."""

    __slots__ = ("_buffer", "_chunks", "_data", "_event_type", "_events", "done", "eof", "error_events")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._data: list[bytes] = []
        self._event_type = b""
        self._events: deque[tuple[bytes, bytes]] = deque()
        self.eof = False
        """The byte stream ended."""
        self.done = False
        """`data: [DONE]` was received."""
        self.error_events = 0

    def _feed(self, chunk: bytes) -> None:
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                self._events.append((self._event_type, b"\n".join(self._data)))
                self._data = []
            self._event_type = b""
            return
        if line[0] == 58:  # ":" starts a comment: keep-alive, never progress
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event_type = value

    def _finish(self) -> None:
        self.eof = True
        if self._buffer:
            self._line(self._buffer)
            self._buffer = b""
        if self._data:  # a last event without its blank line: keep it, the parser judges it
            self._events.append((self._event_type, b"\n".join(self._data)))
            self._data = []

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
        while not self._events:
            if self.eof or self.done:
                return None
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    self._finish()
                    continue
            if scope.cancelled_caught:
                raise SSEDeadline
            self._feed(chunk)
        event = self._events.popleft()
        if event[1] == DONE:
            self.done = True
            return None
        return event
