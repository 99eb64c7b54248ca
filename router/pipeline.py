"""The request path, top to bottom: resolve → cache → rank → attempt → record.

Each step is a small piece with one job. Nothing here knows a provider's wire format:
adapters (`providers/`) turn HTTP into answers or `ProviderError`s, policies (`policies/`)
order candidates, and this module decides what to try next and writes down what happened.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import httpx2
import tenacity
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from policies import Candidate, get_policy
from providers import (
    PROVIDERS,
    ChunkStream,
    Completed,
    Deadlines,
    FailureKind,
    OpenAICompatible,
    ProviderError,
    ProviderTimeout,
)
from router.config import RetryPolicy, RouterConfig, Timeouts, merge_retry, merge_timeouts
from router.errors import no_candidates, to_caller_error, unknown_model
from router.hints import RouteHints
from router.record import Attempt, RouteRecord, attach_route
from router.stats import MemoryStats
from router.streaming import RouterStream

T = TypeVar("T")
logger = logging.getLogger("router")


@dataclass(frozen=True, slots=True)
class Deployment:
    """A candidate with the adapter that reaches it and the time limits that apply to it."""

    candidate: Candidate
    adapter: OpenAICompatible
    timeouts: Timeouts


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """An alias (or a bare model id): its deployments, fallbacks and settings."""

    name: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...]
    policy: str
    retry: RetryPolicy


class RouteTable:
    """Step 1's data: aliases and model ids → deployments, built once from the config."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.adapters: dict[str, OpenAICompatible] = {}
        for name, backend in config.backends.items():
            cls = PROVIDERS[backend.provider]
            key = backend.api_key.get_secret_value() if backend.api_key is not None else None
            if key is None and cls.api_key_env:
                key = os.environ.get(cls.api_key_env)
            self.adapters[name] = cls(base_url=backend.base_url, api_key=key, headers=backend.headers, name=name)
        self.routes: dict[str, ModelRoute] = {}
        by_model: dict[str, dict[str, Deployment]] = {}
        for alias, model in config.models.items():
            deployments = []
            for order, entry in enumerate(model.deployments):
                backend = config.backends[entry.backend]
                candidate = Candidate(
                    id=f"{entry.backend}/{entry.model}",
                    backend=entry.backend,
                    provider=backend.provider,
                    model=entry.model,
                    order=order,
                    weight=entry.weight,
                )
                timeouts = merge_timeouts(config.timeouts, backend.timeouts, model.timeouts)
                deployment = Deployment(candidate, self.adapters[entry.backend], timeouts)
                deployments.append(deployment)
                by_model.setdefault(entry.model, {}).setdefault(candidate.id, deployment)
            self.routes[alias] = ModelRoute(
                alias,
                tuple(deployments),
                tuple(model.fallbacks),
                model.policy or config.policy,
                merge_retry(config.retry, model.retry),
            )
        self.by_model_id = {
            model_id: ModelRoute(model_id, tuple(found.values()), (), config.policy, config.retry)
            for model_id, found in by_model.items()
            if model_id not in self.routes
        }

    def resolve(self, model: str) -> list[ModelRoute]:
        """The alias (or model id) asked for, then its fallbacks, breadth first, each once."""
        first = self.routes.get(model) or self.by_model_id.get(model)
        if first is None:
            raise unknown_model(model, list(self.routes))
        tiers, seen, queue = [], {first.name}, [first]
        while queue:
            route = queue.pop(0)
            tiers.append(route)
            for name in route.fallbacks:
                if name not in seen:
                    seen.add(name)
                    queue.append(self.routes[name])
        return tiers


def _matches(candidate: Candidate, names: tuple[str, ...]) -> bool:
    return candidate.backend in names or candidate.provider in names or candidate.id in names


class _WaitRetryAfter(tenacity.wait.wait_base):
    """Back off exponentially with jitter, but never less than the provider's Retry-After."""

    def __init__(self, backoff: tenacity.wait.wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = self.backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, ProviderError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait


@dataclass(slots=True)
class Call:
    """One caller request in flight through the path."""

    body: dict[str, Any]
    stream: bool
    hints: RouteHints
    record: RouteRecord
    started: float
    deadline: float
    attempts_left: int
    extra_headers: Mapping[str, str] | None = None
    extra_query: Mapping[str, Any] | None = None


@dataclass(slots=True)
class _Opened:
    upstream: ChunkStream
    buffered: list[ChatCompletionChunk]


@dataclass(slots=True)
class _Served(Generic[T]):
    deployment: Deployment
    attempt: Attempt
    started: float
    result: T


class RequestPath:
    """Runs calls through the five steps against one route table."""

    def __init__(self, table: RouteTable, client: httpx2.AsyncClient, stats: MemoryStats, rng: random.Random) -> None:
        self.table = table
        self.client = client
        self.stats = stats
        self.rng = rng

    # 1. resolve -------------------------------------------------------------------------

    def start(
        self,
        model: str,
        body: dict[str, Any],
        *,
        stream: bool,
        hints: RouteHints,
        timeout_s: float | None,
        extra_headers: Mapping[str, str] | None,
        extra_query: Mapping[str, Any] | None,
    ) -> tuple[Call, list[ModelRoute]]:
        """Resolve the model and open the call's budgets (deadline, attempts)."""
        tiers = self.table.resolve(model)
        first = tiers[0]
        now = anyio.current_time()
        limits = [first.deployments[0].timeouts.total_s]
        limits += [v for v in (hints.deadline_s, timeout_s) if v is not None]
        record = RouteRecord(
            requested_model=model,
            alias=first.name if first.name in self.table.routes else None,
            policy=hints.policy or first.policy,
            stream=stream,
        )
        call = Call(
            body, stream, hints, record, now, now + min(limits), first.retry.max_attempts, extra_headers, extra_query
        )
        return call, tiers

    # 2. cache: the response-cache issue slots in here, keyed on the resolved candidate set.

    # 3. rank ----------------------------------------------------------------------------

    def rank(self, route: ModelRoute, call: Call) -> list[Deployment]:
        """Drop excluded deployments, order the rest by the policy, honour `prefer`."""
        hints = call.hints
        allowed = [d for d in route.deployments if not _matches(d.candidate, hints.exclude)]
        by_id = {d.candidate.id: d for d in allowed}
        policy = get_policy(hints.policy or route.policy)
        ranked = policy.rank([d.candidate for d in allowed], self.stats, now=anyio.current_time(), rng=self.rng)
        if hints.prefer:
            ranked.sort(
                key=lambda c: next((i for i, n in enumerate(hints.prefer) if _matches(c, (n,))), len(hints.prefer))
            )
        return [by_id[c.id] for c in ranked]

    # 4. attempt -------------------------------------------------------------------------

    async def complete(self, call: Call, tiers: list[ModelRoute]) -> ChatCompletion:
        """Serve a non-streamed call: the first deployment that answers wins."""
        served = await self._first_success(call, tiers, self._complete_once)
        completed: Completed = served.result
        now = anyio.current_time()
        self.stats.end(served.deployment.candidate.id, ok=True, seconds=now - served.started)
        record = call.record
        record.latency_s = now - call.started
        record.usage = completed.usage
        record.rate_limits = completed.rate_limits
        record.complete = True
        attach_route(completed.completion, record)
        return completed.completion

    async def stream(self, call: Call, tiers: list[ModelRoute], *, caller_wants_usage: bool) -> RouterStream:
        """Serve a streamed call; failures before the first token fall over, after it they raise."""
        served = await self._first_success(call, tiers, self._open_stream)
        opened = served.result
        if opened.upstream.saw_token:
            call.record.ttft_s = anyio.current_time() - call.started
        call.record.rate_limits = opened.upstream.rate_limits
        return RouterStream(
            opened.upstream,
            opened.buffered,
            record=call.record,
            attempt=served.attempt,
            call_started=call.started,
            attempt_started=served.started,
            stats=self.stats,
            candidate_id=served.deployment.candidate.id,
            include_usage=caller_wants_usage,
        )

    async def _complete_once(
        self, deployment: Deployment, body: dict[str, Any], deadlines: Deadlines, call: Call
    ) -> Completed:
        return await deployment.adapter.complete(
            self.client, body, deadlines, extra_headers=call.extra_headers, extra_query=call.extra_query
        )

    async def _open_stream(
        self, deployment: Deployment, body: dict[str, Any], deadlines: Deadlines, call: Call
    ) -> _Opened:
        """Open the stream and hold its chunks back until the first token: the commit point."""
        upstream = await deployment.adapter.stream(
            self.client, body, deadlines, extra_headers=call.extra_headers, extra_query=call.extra_query
        )
        buffered: list[ChatCompletionChunk] = []
        try:
            while not upstream.saw_token:
                try:
                    buffered.append(await upstream.__anext__())
                except StopAsyncIteration:
                    break
        except BaseException:
            await upstream.aclose()
            raise
        return _Opened(upstream, buffered)

    async def _first_success(
        self,
        call: Call,
        tiers: list[ModelRoute],
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
    ) -> _Served[T]:
        """Walk the tiers (alias, then fallbacks), each ranked; retry, then fall over."""
        last: ProviderError | None = None
        tried_any = False
        for route in tiers:
            for deployment in self.rank(route, call):
                tried_any = True
                if call.attempts_left <= 0 or anyio.current_time() >= call.deadline:
                    break
                try:
                    served = await self._with_retries(deployment, route.retry, call, operation)
                except ProviderError as failure:
                    last = failure
                    if failure.kind is FailureKind.CONTENT_FILTERED:
                        raise self._give_up(call, failure) from failure
                else:
                    if route is not tiers[0]:
                        call.record.fallback = route.name
                    return served
        if last is None:
            if not tried_any:
                raise no_candidates(call.record.requested_model, list(call.hints.exclude), call.record)
            last = ProviderTimeout("the call's deadline passed before any attempt")
        raise self._give_up(call, last) from last

    def _give_up(self, call: Call, failure: ProviderError) -> Exception:
        logger.warning("call failed: %s", call.record.summary())
        call.record.latency_s = anyio.current_time() - call.started
        call.record.complete = True
        url = None
        if call.record.attempts:
            last = call.record.attempts[-1]
            adapter = self.table.adapters.get(last.backend)
            url = adapter.base_url if adapter else None
        return to_caller_error(failure, call.record.attempts, call.record, url=url)

    async def _with_retries(
        self,
        deployment: Deployment,
        retry: RetryPolicy,
        call: Call,
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
    ) -> _Served[T]:
        """Retry one deployment while it can help, within the call's attempts and deadline."""

        def worth_retrying(error: BaseException) -> bool:
            return (
                isinstance(error, ProviderError)
                and error.retryable
                and (error.retry_after is None or error.retry_after <= retry.max_retry_after_s)
            )

        def out_of_budget(state: tenacity.RetryCallState) -> bool:
            return (
                state.attempt_number >= retry.attempts_per_deployment
                or call.attempts_left <= 0
                or anyio.current_time() + state.upcoming_sleep >= call.deadline
            )

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(worth_retrying),
            wait=_WaitRetryAfter(
                tenacity.wait_exponential_jitter(
                    multiplier=retry.backoff_initial_s, max=retry.backoff_max_s, jitter=retry.backoff_initial_s
                )
            ),
            stop=out_of_budget,
            sleep=anyio.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt_once(deployment, call, operation)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _attempt_once(
        self,
        deployment: Deployment,
        call: Call,
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
    ) -> _Served[T]:
        """One try: prepare the body for this provider, send it, write the attempt down."""
        candidate = deployment.candidate
        started = anyio.current_time()
        call.attempts_left -= 1
        timeouts = deployment.timeouts
        deadlines = Deadlines(
            connect_s=max(0.001, min(timeouts.connect_s, call.deadline - started)),
            first_token_at=started + timeouts.first_token_s,
            stall_s=timeouts.stall_s,
            total_at=min(call.deadline, started + timeouts.total_s),
        )
        attempt = Attempt(candidate.backend, candidate.provider, candidate.model, "ok", 0.0)
        call.record.attempts.append(attempt)
        try:
            body = deployment.adapter.prepare({**call.body, "model": candidate.model}, stream=call.stream)
        except ProviderError as failure:
            _failed(attempt, failure, 0.0)
            raise
        self.stats.begin(candidate.id)
        try:
            result = await operation(deployment, body, deadlines, call)
        except ProviderError as failure:
            seconds = anyio.current_time() - started
            self.stats.end(candidate.id, ok=False, seconds=seconds)
            _failed(attempt, failure, seconds)
            raise
        except BaseException:
            seconds = anyio.current_time() - started
            self.stats.end(candidate.id, ok=False, seconds=seconds)
            attempt.outcome, attempt.seconds = "cancelled", seconds
            raise
        attempt.seconds = anyio.current_time() - started
        record = call.record
        record.backend, record.provider, record.model = candidate.backend, candidate.provider, candidate.model
        return _Served(deployment, attempt, started, result)


def _failed(attempt: Attempt, failure: ProviderError, seconds: float) -> None:
    logger.info(
        "attempt failed: %s/%s %s after %.3fs: %s",
        attempt.backend,
        attempt.model,
        failure.kind.value,
        seconds,
        failure.message,
    )
    attempt.outcome = failure.kind.value
    attempt.seconds = seconds
    attempt.status_code = failure.status_code
    attempt.error = failure.message
    attempt.retry_after_s = failure.retry_after
