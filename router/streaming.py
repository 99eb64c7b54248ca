"""What `create(stream=True)` returns: the committed upstream stream, made honest for the caller.

The chunks held back before the commit point come first, then the live stream. A break
after the commit never ends like a finished answer: it raises `StreamInterruptedError`
with the partial text. The route record is complete when the stream ends or is closed.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import anyio
from openai.types.chat import ChatCompletionChunk

from providers import ChunkStream, ProviderError
from router.circuit import Circuits
from router.errors import stream_interrupted
from router.record import Attempt, RouteRecord, attach_route
from router.stats import StatsStore


class RouterStream:
    """An async iterator of `ChatCompletionChunk`, closable early (the connection goes at once)."""

    def __init__(
        self,
        upstream: ChunkStream,
        buffered: list[ChatCompletionChunk],
        *,
        record: RouteRecord,
        attempt: Attempt,
        call_started: float,
        attempt_started: float,
        first_token_at: float | None,
        stats: StatsStore,
        circuits: Circuits,
        candidate_id: str,
        include_usage: bool,
    ) -> None:
        self._upstream = upstream
        self._buffered = deque(buffered)
        self._record = record
        self._attempt = attempt
        self._call_started = call_started
        self._attempt_started = attempt_started
        self._first_token_at = first_token_at
        self._stats = stats
        self._circuits = circuits
        self._candidate_id = candidate_id
        self._include_usage = include_usage
        self._text: list[str] = []
        self._done = False
        attach_route(self, record)

    @property
    def route(self) -> RouteRecord:
        """The route record; `complete` turns True when the stream has ended."""
        return self._record

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        while True:
            if self._buffered:
                chunk = self._buffered.popleft()
            else:
                if self._done:
                    raise StopAsyncIteration
                try:
                    chunk = await self._upstream.__anext__()
                except StopAsyncIteration:
                    self._finish(None)
                    raise
                except ProviderError as failure:
                    self._finish(failure)
                    raise stream_interrupted(
                        failure, "".join(self._text), self._upstream.usage, self._record.attempts, self._record
                    ) from failure
                except BaseException:
                    await self._upstream.aclose()
                    self._finish(None, outcome="cancelled")
                    raise
            choices = chunk.choices
            if choices:
                content = choices[0].delta.content
                if content:
                    self._text.append(content)
            elif not self._include_usage and chunk.usage is not None:
                continue  # we asked upstream for usage; the caller did not
            return chunk

    def _finish(self, failure: ProviderError | None, *, outcome: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        now = anyio.current_time()
        seconds = now - self._attempt_started
        self._attempt.seconds = seconds
        if failure is not None:
            self._attempt.outcome = failure.kind.value
            self._attempt.error = failure.message
            self._circuits.record(self._candidate_id, now, failure=failure.kind, message=failure.message)
        elif outcome is not None:
            self._attempt.outcome = outcome
        record = self._record
        record.latency_s = now - self._call_started
        usage = record.usage = self._upstream.usage
        record.complete = True
        ttft = tokens_per_s = cached_share = None
        if self._first_token_at is not None:
            ttft = self._first_token_at - self._attempt_started
            decode_s = now - self._first_token_at
            if usage is not None and decode_s > 0 and usage.completion_tokens > 1 and failure is None:
                tokens_per_s = (usage.completion_tokens - 1) / decode_s
        if usage is not None and usage.prompt_tokens > 0:
            cached_share = usage.cached_prompt_tokens / usage.prompt_tokens
        self._stats.end(
            self._candidate_id,
            now,
            ok=failure is None,
            seconds=seconds,
            stream=True,
            ttft_s=ttft,
            tokens_per_s=tokens_per_s,
            cached_share=cached_share,
        )

    async def close(self) -> None:
        """Stop reading and release the connection now."""
        self._buffered.clear()
        await self._upstream.aclose()
        self._finish(None)

    aclose = close

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
