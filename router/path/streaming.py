"""What `create(stream=True)` returns: the committed upstream stream, made honest for the caller.

The chunks held back before the commit point come first, then the live stream. A break
after the commit never ends like a finished answer: it raises `StreamInterruptedError`
with the partial text — or, with `streams.recover: continue`, the answer is continued by
another deployment and the caller sees one seamless stream. The route record is complete
when the stream ends or is closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import anyio
import httpx2
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk

from providers import ProviderError, Usage, has_token
from router.errors import stream_interrupted
from router.path.circuit import Circuits
from router.path.events import CallInfo, Observers
from router.path.pauses import paused_s
from router.path.record import ROUTE_EXTENSION, Attempt, RouteRecord, attach_route, route_headers
from router.path.stats import StatsStore


class Upstream(Protocol):
    """What a leg reads chunks from: a provider's `ChunkStream`, or a replay of a cached answer."""

    usage: Usage | None

    def __anext__(self) -> Awaitable[ChatCompletionChunk]: ...

    async def aclose(self) -> None: ...


class Replay:
    """A cached answer's chunks, served as an upstream."""

    def __init__(self, chunks: list[ChatCompletionChunk], usage: Usage | None) -> None:
        self._chunks = iter(chunks)
        self.usage = usage

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._chunks = iter(())


@dataclass(slots=True)
class Leg:
    """One upstream stream serving (part of) the answer: its attempt and timings."""

    upstream: Upstream
    buffered: list[ChatCompletionChunk]
    attempt: Attempt | None
    """None for a cache replay: nothing was sent."""
    candidate_id: str
    started: float
    first_token_at: float | None
    release: Callable[[], Awaitable[None]] | None = None
    """Gives back a shared concurrency slot when the leg ends."""
    paused_at: float = 0.0
    """`paused_s()` when the attempt started, and when its first token came: garbage-collection
    pauses in between are not the backend's (`router.path.pauses`)."""
    paused_at_first_token: float = 0.0


OnFinish = Callable[[list[ChatCompletionChunk] | None], Awaitable[None]]
"""Called once when the stream ends: with every chunk when it finished cleanly, else None."""


Recover = Callable[[str, int], Awaitable[Leg | None]]
"""Given the text delivered so far and the chunks it took, open a stream that continues it (or None)."""


class RouterStream(AsyncStream[ChatCompletionChunk]):
    """An async iterator of `ChatCompletionChunk`, closable early (the connection goes at once).

    An `openai.AsyncStream`, as `create(stream=True)` returns, for code that checks; its
    `response` is a stand-in HTTP response carrying the route headers (nothing was sent from here).
    """

    def __init__(
        self,
        leg: Leg,
        *,
        record: RouteRecord,
        call_started: float,
        stats: StatsStore,
        circuits: Circuits,
        include_usage: bool,
        recover: Recover | None = None,
        on_finish: OnFinish | None = None,
        pricing: Callable[[str, Usage | None], float | None] | None = None,
        observers: Observers | None = None,
        info: CallInfo | None = None,
    ) -> None:
        self._leg = leg
        self._buffered = deque(leg.buffered)
        self._record = record
        self._call_started = call_started
        self._stats = stats
        self._circuits = circuits
        self._include_usage = include_usage
        self._recover = recover
        self._on_finish = on_finish
        self._pricing = pricing
        self._observers = observers
        self._info = info
        self._told = False
        self._kept: list[ChatCompletionChunk] | None = [] if on_finish is not None else None
        self._text: list[str] = []
        self._delivered = 0
        self._done = False
        attach_route(self, record)

    @property
    def route(self) -> RouteRecord:
        """The route record; `complete` turns True when the stream has ended."""
        return self._record

    @property
    def response(self) -> httpx2.Response:  # type: ignore[override]
        """A stand-in for the HTTP response: status 200 and the route headers as they were at the commit."""
        made: httpx2.Response | None = self.__dict__.get("_response")
        if made is None:
            made = httpx2.Response(
                200,
                headers={"content-type": "text/event-stream", **route_headers(self._record)},
                extensions={ROUTE_EXTENSION: self._record},
            )
            self.__dict__["_response"] = made
        return made

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
                    chunk = await self._leg.upstream.__anext__()
                except StopAsyncIteration:
                    self._finish(None)
                    self._tell(None)
                    await self._report(self._kept)
                    raise
                except ProviderError as failure:
                    if await self._continue_after(failure):
                        continue
                    error = stream_interrupted(
                        failure, "".join(self._text), self._leg.upstream.usage, self._record.attempts, self._record
                    )
                    self._tell(error)
                    await self._report(None)
                    raise error from failure
                except BaseException as error:
                    await self._leg.upstream.aclose()
                    self._finish(None, outcome="cancelled")
                    self._tell(error)
                    await self._report(None)
                    raise
            if self._kept is not None:
                self._kept.append(chunk)
            choices = chunk.choices
            if choices:
                content = choices[0].delta.content
                if content:
                    self._text.append(content)
                    self._delivered += 1
            elif not self._include_usage and chunk.usage is not None:
                continue  # we asked upstream for usage; the caller did not
            return chunk

    def _tell(self, error: BaseException | None) -> None:
        """Tell the observers, once, how the call ended (closed early by the caller counts as served)."""
        if self._told or self._observers is None or self._info is None:
            return
        self._told = True
        if error is None:
            self._observers.call_succeeded(self._info)
        else:
            self._observers.call_failed(self._info, error)

    async def _report(self, chunks: list[ChatCompletionChunk] | None) -> None:
        await self._release()
        on_finish, self._on_finish = self._on_finish, None
        if on_finish is not None:
            await on_finish(chunks)

    async def _release(self) -> None:
        release, self._leg.release = self._leg.release, None
        if release is not None:
            await release()

    async def _continue_after(self, failure: ProviderError) -> bool:
        """Record the broken leg; with recovery configured, switch to a continuation. False: raise."""
        self._kept = None  # a stitched answer is never cached
        self._end_leg(failure)
        await self._release()
        text = "".join(self._text)
        leg = await self._recover(text, self._delivered) if self._recover is not None and text else None
        if leg is None:
            self._finish_record()
            return False
        self._leg = leg
        self._record.recovered_after_chars = len(text)
        # the caller already has the role and the text so far: pass on only what continues it
        self._buffered = deque(c for c in leg.buffered if has_token(c) or _ends_or_counts(c))
        return True

    def _end_leg(self, failure: ProviderError | None, *, outcome: str | None = None) -> None:
        """Close the books on the current upstream attempt: its outcome, timings, stats and circuit."""
        leg = self._leg
        if leg.attempt is None:  # a cache replay: nothing upstream to account for
            return
        now = anyio.current_time()
        seconds = now - leg.started
        leg.attempt.seconds = seconds
        if failure is not None:
            leg.attempt.outcome = failure.kind.value
            leg.attempt.error = failure.message
            self._circuits.record(leg.candidate_id, now, failure=failure.kind, message=failure.message)
        elif outcome is not None:
            leg.attempt.outcome = outcome
        usage = leg.upstream.usage
        ttft = tokens_per_s = cached_share = None
        if leg.first_token_at is not None:
            ttft = leg.first_token_at - leg.started
            decode_s = now - leg.first_token_at
            if usage is not None and decode_s > 0 and usage.completion_tokens > 1 and failure is None:
                tokens_per_s = (usage.completion_tokens - 1) / decode_s
        if usage is not None and usage.prompt_tokens > 0:
            cached_share = usage.cached_prompt_tokens / usage.prompt_tokens
        self._stats.end(
            leg.candidate_id,
            now,
            ok=failure is None,
            seconds=seconds,
            stream=True,
            ttft_s=ttft,
            tokens_per_s=tokens_per_s,
            cached_share=cached_share,
            paused_s=paused_s() - leg.paused_at,
            ttft_paused_s=leg.paused_at_first_token - leg.paused_at if ttft is not None else 0.0,
        )
        if self._observers is not None and self._info is not None:
            self._observers.attempt_ended(self._info, leg.attempt)

    def _finish_record(self) -> None:
        self._done = True
        record = self._record
        record.latency_s = anyio.current_time() - self._call_started
        record.usage = self._leg.upstream.usage
        if self._pricing is not None and self._leg.attempt is not None:
            record.cost_usd = self._pricing(self._leg.candidate_id, record.usage)
        record.complete = True

    def _finish(self, failure: ProviderError | None, *, outcome: str | None = None) -> None:
        if self._done:
            return
        self._end_leg(failure, outcome=outcome)
        self._finish_record()

    async def close(self) -> None:
        """Stop reading and release the connection now."""
        self._buffered.clear()
        await self._leg.upstream.aclose()
        self._finish(None)
        self._tell(None)
        await self._report(None)

    aclose = close

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _ends_or_counts(chunk: ChatCompletionChunk) -> bool:
    """A chunk worth passing on even without text: a finish reason or the usage."""
    return chunk.usage is not None or any(c.finish_reason is not None for c in chunk.choices)
