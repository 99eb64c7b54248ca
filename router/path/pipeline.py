"""The request path, top to bottom: resolve → cache → rank → attempt → record.

Each step is a small piece with one job. Nothing here knows a provider's wire format:
adapters (`providers/`) turn HTTP into answers or `ProviderError`s, policies (`policies/`)
order candidates, and this module decides what to try next and writes down what happened.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import anyio
import httpx2
import tenacity
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from policies import DeploymentStats, Policy, RequestProfile, StatsView, get_policy
from policies.estimates import expected_completion_s, expected_cost_usd, expected_duration_s, expected_ttft_s, load
from providers import (
    Answered,
    ChunkStream,
    Completed,
    ContextTooLong,
    Deadlines,
    FailureKind,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Usage,
    parse_rate_limits,
)
from providers.endpoints import RawEvent
from router.cache import ENDPOINT_KEY, Entry, Plan, ResponseCache
from router.config import HedgePolicy, RetryPolicy, StreamPolicy, Timeouts, TimeoutsOverride, merge_timeouts
from router.config.eligibility import Exclusion, Limits, RequestFacts, exclusion_reason, names_match, request_facts
from router.config.routes import Deployment, ModelRoute, RouteTable
from router.errors import cache_miss, no_candidates, to_caller_error
from router.path.circuit import Admission, Circuits
from router.path.events import CallInfo, CircuitChange, Observers
from router.path.hints import RouteHints
from router.path.homes import ResponseHomes
from router.path.pauses import paused_s
from router.path.record import Attempt, RankedCandidate, RouteRecord, attach_route
from router.path.shared import SharedState
from router.path.stats import StatsStore
from router.path.streaming import Leg, OnFinish, Replay, RouterStream

T = TypeVar("T")
A = TypeVar("A", Completed, Answered)
logger = logging.getLogger("router")


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
    facts: RequestFacts
    profile: RequestProfile
    record: RouteRecord
    started: float
    deadline: float
    attempts_left: int
    streams: StreamPolicy
    info: CallInfo
    """What observers (hooks, usage, tracing, metrics) see of the call."""
    timeouts: TimeoutsOverride | None = None
    """A matching rule's per-attempt time limits, over each deployment's."""
    panic: bool = False
    """Every circuit was open: each deployment is tried once anyway."""
    extra_headers: Mapping[str, str] | None = None
    extra_query: Mapping[str, Any] | None = None
    endpoint: str = "chat"
    """Which OpenAI endpoint the call is for: `chat`, `completions`, `embeddings` or `responses`."""
    failed_probes: set[str] = field(default_factory=set)
    """Deployments this call probed (half-open) in vain: not retried, the call moves on."""


@dataclass(slots=True)
class _Opened:
    upstream: ChunkStream
    buffered: list[ChatCompletionChunk]
    first_token_at: float | None
    paused_at_first_token: float = 0.0
    """`paused_s()` when the first token came (garbage-collection pauses before it are not the backend's)."""


@dataclass(slots=True)
class _Served(Generic[T]):
    deployment: Deployment
    attempt: Attempt
    started: float
    result: T
    slot: str | None = None
    """A shared concurrency slot still held (by a stream until it ends)."""
    paused_at: float = 0.0
    """`paused_s()` when the attempt started."""


class RequestPath:
    """Runs calls through the five steps against one route table."""

    def __init__(
        self,
        table: RouteTable,
        client: httpx2.AsyncClient,
        stats: StatsStore,
        rng: random.Random,
        *,
        wall_clock: Callable[[], datetime] | None = None,
        cache: ResponseCache | None = None,
        shared: SharedState | None = None,
        observers: Observers | None = None,
        circuits: Circuits | None = None,
        homes: ResponseHomes | None = None,
    ) -> None:
        self.table = table
        self.client = client
        self.stats = stats
        self.rng = rng
        self.wall_clock = wall_clock or (lambda: datetime.now(UTC))
        """The UTC time that prices are looked up for (DeepSeek's off-peak hours); replaceable in tests."""
        self._policies: dict[str, Policy] = {}
        self.circuits = circuits or Circuits(table.config.circuit)
        """Shared across reloads: a deployment's health outlives the config that named it."""
        self.circuits.configure(table.config.circuit, table.circuit_settings())
        self._hedges = _HedgeBudget()
        self.cache = cache
        self.shared = shared
        self.observers = observers or Observers()
        self.circuits.on_open = shared.circuit_opened if shared is not None else None
        self.circuits.on_close = shared.circuit_closed if shared is not None else None
        self.circuits.on_change = self._circuit_changed
        self.homes = homes if homes is not None else ResponseHomes()
        """Which deployment holds each stored Responses answer (shared across reloads)."""

    def _circuit_changed(self, candidate_id: str, previous: str, state: str, why: str) -> None:
        self.observers.circuit_changed(CircuitChange(candidate_id, previous, state, why))

    def server_answers_again(self, backend: str) -> None:
        """A self-hosted server answers load probes again after failing to: its deployments' circuits
        may close now, without a caller paying for a probe (the load poller calls this)."""
        now = anyio.current_time()
        for candidate_id in self.table.candidates_of(backend):
            self.circuits.server_answered(candidate_id, now)

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
        endpoint: str = "chat",
    ) -> tuple[Call, list[ModelRoute]]:
        """Resolve the model, apply the first matching rule, and open the call's budgets (deadline, attempts)."""
        table = self.table
        tiers = table.resolve(model)
        facts = request_facts(body, stream=stream, endpoint=endpoint)
        if facts.needs_response_state:  # a stored response lives on one deployment: go there
            home = self.homes.get(body["previous_response_id"])
            if home is not None:
                hints = hints.model_copy(update={"only": (home,), "exclude": ()})
        rule = table.rules.match(model, body, facts, hints.tags, self.wall_clock()) if table.rules else None
        timeouts = deadline_s = None
        if rule is not None:
            tiers = table.rules.tiers(rule, table, model)
            timeouts, deadline_s = rule.settings.timeouts, rule.settings.deadline_s
        first = tiers[0]
        now = anyio.current_time()
        total_s = first.deployments[0].timeouts.total_s
        if timeouts is not None and timeouts.total_s is not None:
            total_s = timeouts.total_s
        limits = [total_s]
        limits += [v for v in (hints.deadline_s if hints.deadline_s is not None else deadline_s, timeout_s) if v]
        record = RouteRecord(
            requested_model=model,
            alias=first.name if first.name in table.routes else None,
            policy=hints.policy or first.policy,
            stream=stream,
            endpoint=endpoint,
            tags=list(hints.tags),
            rule=rule.name if rule is not None else None,
        )
        call = Call(
            body,
            stream,
            hints,
            facts,
            facts.profile(),
            record,
            now,
            now + min(limits),
            first.retry.max_attempts,
            first.streams,
            CallInfo(record, body),
            timeouts,
            extra_headers=extra_headers,
            extra_query=extra_query,
            endpoint=endpoint,
        )
        return call, tiers

    # 2. cache ----------------------------------------------------------------------------

    def cache_plan(self, call: Call, tiers: list[ModelRoute]) -> Plan | None:
        """Whether and how this call uses the cache; its key covers the candidate set the hints leave."""
        if self.cache is None or call.endpoint == "responses" or (call.stream and call.endpoint != "chat"):
            return None  # a Responses answer has an id of its own; other endpoints' streams aren't kept
        hints = call.hints
        candidates = []
        for route in tiers:
            only, exclude = hints.only or route.only, hints.exclude or route.exclude
            candidates += [
                d.candidate.id
                for d in route.deployments
                if not (only and not names_match(d.candidate, only))
                and not (exclude and names_match(d.candidate, exclude))
            ]
        body = call.body if call.endpoint == "chat" else {**call.body, ENDPOINT_KEY: call.endpoint}
        return self.cache.plan(
            candidates,
            body,
            mode=hints.cache,
            ttl_s=hints.cache_ttl_s,
            alias=tiers[0].cache,
            always_same=call.endpoint == "embeddings",
        )

    async def _cached(self, call: Call, plan: Plan) -> Entry | None:
        """A hit, or None; with `only-if-cached`, a miss raises."""
        assert self.cache is not None
        entry = await self.cache.lookup(plan.key) if plan.read else None
        if entry is None and plan.only_if_cached:
            raise cache_miss(call.record.requested_model, call.record)
        if entry is not None:
            record = call.record
            record.cached = True
            record.cost_usd = 0.0
            record.cache_age_s = max(0.0, time.time() - entry.created)
            record.latency_s = anyio.current_time() - call.started
            record.complete = True
        return entry

    async def _shared_call(self, call: Call, plan: Plan) -> Entry | None:
        """Join the single flight for this key; a follower gets the leader's answer (or None: go itself)."""
        assert self.cache is not None
        leader = await self.cache.join(plan.key, wait_s=max(0.0, call.deadline - anyio.current_time()))
        if leader:
            return None
        entry = await self._cached(call, replace(plan, only_if_cached=False))
        return entry if entry is not None else None

    # 3. rank ----------------------------------------------------------------------------

    def rank(self, route: ModelRoute, call: Call) -> list[Deployment]:
        """Screen the deployments, order the eligible by the policy, then apply headroom and `prefer`.

        Writes the trace (every candidate's inputs, every exclusion's reason) into the route record.
        """
        hints = call.hints
        now = anyio.current_time()
        view = self.stats.view(now)
        when = self.wall_clock()
        limits = _limits(route, hints)
        eligible: dict[str, Deployment] = {}
        for deployment in route.deployments:
            candidate = deployment.candidate_at(when)
            blocked = self.circuits.blocked(candidate.id, now)
            if call.panic and self.circuits.rate_limited_for(candidate.id, now) is None:
                blocked = None  # panic mode ignores health circuits, never a provider's Retry-After
            reason = blocked or exclusion_reason(candidate, deployment.serves, call.facts, limits, view)
            if reason is None:
                eligible.setdefault(candidate.id, deployment)
            else:
                call.record.excluded.append(Exclusion(candidate.id, reason))
        policy_name = hints.policy or route.policy
        ranked = self._policy(policy_name).rank(
            [d.candidate for d in eligible.values()], view, request=call.profile, now=now, rng=self.rng
        )
        # No provoked 429s: a deployment whose headroom can't take this request goes last until its reset.
        needed = call.facts.prompt_tokens + (call.facts.max_output_tokens or 0)
        limited = {c.id for c in ranked if _short_of_headroom(view.get(c.id), needed)}
        if limited:
            ranked.sort(key=lambda c: c.id in limited)
        if hints.prefer:
            prefer = hints.prefer
            ranked.sort(key=lambda c: next((i for i, n in enumerate(prefer) if names_match(c, (n,))), len(prefer)))
        for position, candidate in enumerate(ranked):
            call.record.ranking.append(_trace(route.name, position, candidate, view, call.profile, now))
        return [eligible[c.id] for c in ranked]

    def _policy(self, name: str) -> Policy:
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = get_policy(name)
        return policy

    def explain(
        self, model: str, body: dict[str, Any], *, stream: bool, hints: RouteHints, endpoint: str = "chat"
    ) -> RouteRecord:
        """Resolve, screen and rank every tier as a call would, without sending anything."""
        call, tiers = self.start(
            model,
            body,
            stream=stream,
            hints=hints,
            timeout_s=None,
            extra_headers=None,
            extra_query=None,
            endpoint=endpoint,
        )
        for route in tiers:
            self.rank(route, call)
        return call.record

    # 4. attempt -------------------------------------------------------------------------

    async def serve(
        self, call: Call, tiers: list[ModelRoute], *, caller_wants_usage: bool
    ) -> ChatCompletion | Answered | RouterStream:
        """Serve the call and tell the observers how it went (a stream's end is told when it ends)."""
        observers = self.observers
        observers.call_started(call.info)
        try:
            with observers.call_scope(call.info):  # e.g. the call's span made current for what runs inside
                if call.stream:
                    return await self.stream(call, tiers, caller_wants_usage=caller_wants_usage)
                completion: ChatCompletion | Answered
                if call.endpoint == "chat":
                    completion = await self.complete(call, tiers)
                else:
                    completion = await self.answer(call, tiers)
        except BaseException as error:
            observers.call_failed(call.info, error)
            raise
        observers.call_succeeded(call.info)
        return completion

    async def complete(self, call: Call, tiers: list[ModelRoute]) -> ChatCompletion:
        """Serve a non-streamed call: from the cache, or the first deployment that answers."""
        plan = self.cache_plan(call, tiers)
        if plan is None:
            return await self._complete_upstream(call, tiers)
        entry = await self._cached(call, plan) or await self._shared_call(call, plan)
        if entry is not None:
            completion = entry.completion()
            call.record.usage = _usage_of(completion.usage)
            attach_route(completion, call.record)
            return completion
        assert self.cache is not None
        try:
            completion = await self._complete_upstream(call, tiers)
            if plan.write and _storable(completion.choices):
                await self.cache.put(plan.key, Entry.of_completion(completion), plan.ttl_s)
            return completion
        finally:
            await self.cache.done(plan.key)

    async def _complete_upstream(self, call: Call, tiers: list[ModelRoute]) -> ChatCompletion:
        """Steps 3–5 for a non-streamed chat call: the first deployment that answers wins."""
        completed = await self._answer_upstream(call, tiers, self._complete_once)
        attach_route(completed.completion, call.record)
        return completed.completion

    async def answer(self, call: Call, tiers: list[ModelRoute]) -> Answered:
        """Serve a non-streamed call to another endpoint (completions, embeddings, responses):
        from the cache where the endpoint's answers may be kept, else the first deployment that answers."""
        plan = self.cache_plan(call, tiers)
        if plan is None:
            answered = await self._answer_upstream(call, tiers, self._answer_once)
            attach_route(answered, call.record)
            return answered
        entry = await self._cached(call, plan) or await self._shared_call(call, plan)
        if entry is not None:
            answered = entry.answer(call.endpoint)
            call.record.usage = answered.usage
            attach_route(answered, call.record)
            return answered
        assert self.cache is not None
        try:
            answered = await self._answer_upstream(call, tiers, self._answer_once)
            attach_route(answered, call.record)
            if plan.write:
                await self.cache.put(plan.key, Entry.of_answer(answered.data), plan.ttl_s)
            return answered
        finally:
            await self.cache.done(plan.key)

    async def _answer_upstream(
        self,
        call: Call,
        tiers: list[ModelRoute],
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[A]],
    ) -> A:
        """Steps 3–5 for a non-streamed call of any endpoint: the first deployment that answers wins."""
        served = await self._first_success(call, tiers, operation)
        completed = served.result
        now = anyio.current_time()
        candidate_id = served.deployment.candidate.id
        self.stats.end(
            candidate_id,
            now,
            ok=True,
            seconds=now - served.started,
            cached_share=_cached_share(completed),
            paused_s=paused_s() - served.paused_at,
        )
        self.stats.observe_rate_limits(candidate_id, completed.rate_limits, now)
        record = call.record
        record.latency_s = now - call.started
        record.usage = completed.usage
        record.cost_usd = self.cost_usd(candidate_id, completed.usage)
        record.rate_limits = completed.rate_limits
        record.complete = True
        if isinstance(completed, Answered) and call.endpoint == "responses":
            self._remember_home(call, served.deployment, completed.data)
        return completed

    def _remember_home(self, call: Call, deployment: Deployment, response: Any) -> None:
        """Note where a stored Responses answer lives, so calls that continue it go there."""
        if call.body.get("store") is False or not deployment.serves.response_state or not isinstance(response, dict):
            return
        response_id = response.get("id")
        if isinstance(response_id, str):
            self.homes.remember(response_id, deployment.candidate.id)

    def cost_usd(self, candidate_id: str, usage: Usage | None) -> float | None:
        """What an answer cost on a deployment, from its usage and the price in effect now: uncached
        prompt tokens at the input price, cache hits at the cached price, completion tokens (reasoning
        included) at the output price. None when the deployment has no per-token price."""
        if usage is None:
            return None
        deployment = self.table.deployment(candidate_id)
        price = deployment.candidate_at(self.wall_clock()).price if deployment is not None else None
        if price is None or (price.per_hour and not (price.input_per_mtok or price.output_per_mtok)):
            return None
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
        return (
            (usage.prompt_tokens - cached) * price.input_per_mtok
            + cached * cached_rate
            + usage.completion_tokens * price.output_per_mtok
        ) / 1_000_000

    async def stream(self, call: Call, tiers: list[ModelRoute], *, caller_wants_usage: bool) -> RouterStream:
        """Serve a streamed call: a cached answer replayed, or steps 3–5 with the answer stored as it ends."""
        plan = self.cache_plan(call, tiers)
        if plan is None:
            return await self._stream_upstream(call, tiers, caller_wants_usage=caller_wants_usage)
        entry = await self._cached(call, plan) or await self._shared_call(call, plan)
        if entry is not None:
            chunks = entry.chunks(include_usage=True)
            usage = _usage_of(next((c.usage for c in reversed(chunks) if c.usage is not None), None))
            call.record.usage = usage
            call.record.ttft_s = anyio.current_time() - call.started
            leg = Leg(Replay(chunks, usage), [], None, "cache", call.started, None)
            return RouterStream(
                leg,
                record=call.record,
                call_started=call.started,
                stats=self.stats,
                circuits=self.circuits,
                include_usage=caller_wants_usage,
                observers=self.observers,
                info=call.info,
            )
        cache = self.cache
        assert cache is not None

        async def store(chunks: list[ChatCompletionChunk] | None) -> None:
            try:
                if chunks and plan.write and _storable([c for chunk in chunks for c in chunk.choices]):
                    await cache.put(plan.key, Entry.of_stream(chunks), plan.ttl_s)
            finally:
                await cache.done(plan.key)

        try:
            return await self._stream_upstream(call, tiers, caller_wants_usage=caller_wants_usage, on_finish=store)
        except BaseException:
            await cache.done(plan.key)
            raise

    async def _stream_upstream(
        self,
        call: Call,
        tiers: list[ModelRoute],
        *,
        caller_wants_usage: bool,
        on_finish: OnFinish | None = None,
    ) -> RouterStream:
        """Steps 3–5 for a streamed call; failures before the first token fall over, after it they raise."""
        served = await self._first_success(call, tiers, self._open_stream)
        opened = served.result
        if opened.first_token_at is not None:
            # what the caller waited for its first token (in buffer mode: the whole answer)
            shown_at = anyio.current_time() if call.streams.commit == "buffer" else opened.first_token_at
            call.record.ttft_s = shown_at - call.started
        call.record.rate_limits = opened.upstream.rate_limits
        self.stats.observe_rate_limits(served.deployment.candidate.id, opened.upstream.rate_limits, served.started)
        failed = served.deployment

        async def recover(text: str, delivered: int) -> Leg | None:
            return await self._continuation(call, tiers, failed, text, delivered)

        return RouterStream(
            _leg(served, self.shared),
            record=call.record,
            call_started=call.started,
            stats=self.stats,
            circuits=self.circuits,
            include_usage=caller_wants_usage or call.endpoint != "chat",
            recover=recover if call.streams.recover == "continue" and call.endpoint == "chat" else None,
            on_finish=on_finish,
            pricing=self.cost_usd,
            observers=self.observers,
            info=call.info,
        )

    async def _continuation(
        self, call: Call, tiers: list[ModelRoute], failed: Deployment, text: str, delivered: int
    ) -> Leg | None:
        """Ask the next deployment that supports prefill to continue `text`; None if none can.

        One attempt per deployment; a deployment that rejects the prefill is recorded and skipped,
        and when none succeeds the caller gets the original failure.
        """
        base = dict(call.body)
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(base.get(key), int):
                base[key] = max(1, base[key] - delivered)
        for route in tiers:
            for deployment in self.rank(route, call):
                if deployment is failed or not deployment.serves.prefill:
                    continue
                if call.attempts_left <= 0 or anyio.current_time() >= call.deadline:
                    return None
                body = deployment.adapter.continuation({**base, "model": deployment.candidate.model}, text)
                self.observers.fell_back(call.info, failed.candidate.id, deployment.candidate.id)
                try:
                    served = await self._attempt_once(deployment, call, self._open_stream, body=body)
                except ProviderError:
                    continue
                return _leg(served, self.shared)
        return None

    async def _complete_once(
        self, deployment: Deployment, body: dict[str, Any], deadlines: Deadlines, call: Call
    ) -> Completed:
        return await deployment.adapter.complete(
            self.client, body, deadlines, extra_headers=call.extra_headers, extra_query=call.extra_query
        )

    async def _answer_once(
        self, deployment: Deployment, body: dict[str, Any], deadlines: Deadlines, call: Call
    ) -> Answered:
        return await deployment.adapter.answer(
            self.client, call.endpoint, body, deadlines, extra_headers=call.extra_headers, extra_query=call.extra_query
        )

    async def _open_stream(
        self, deployment: Deployment, body: dict[str, Any], deadlines: Deadlines, call: Call
    ) -> _Opened:
        """Open the stream and hold its chunks back until the first token: the commit point."""
        adapter = deployment.adapter
        upstream: ChunkStream
        if call.endpoint == "chat":
            upstream = await adapter.stream(
                self.client, body, deadlines, extra_headers=call.extra_headers, extra_query=call.extra_query
            )
        else:
            upstream = await adapter.open_events(
                self.client,
                call.endpoint,
                body,
                deadlines,
                extra_headers=call.extra_headers,
                extra_query=call.extra_query,
            )
        buffered: list[ChatCompletionChunk] = []
        whole = call.streams.commit == "buffer"  # hold everything back until the answer is complete
        first_token_at = None
        paused_at_first_token = 0.0
        try:
            while whole or not upstream.saw_token:
                try:
                    buffered.append(await upstream.__anext__())
                except StopAsyncIteration:
                    break
                if first_token_at is None and upstream.saw_token:
                    first_token_at = anyio.current_time()
                    paused_at_first_token = paused_s()
        except BaseException:
            await upstream.aclose()
            raise
        if call.endpoint == "responses":
            events: list[Any] = buffered  # a non-chat stream's items are its raw events
            created = next((_json(e.data) for e in events if isinstance(e, RawEvent)), None)
            self._remember_home(call, deployment, created.get("response") if isinstance(created, dict) else None)
        return _Opened(upstream, buffered, first_token_at, paused_at_first_token)

    async def _first_success(
        self,
        call: Call,
        tiers: list[ModelRoute],
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
    ) -> _Served[T]:
        """Walk the tiers (alias, then fallbacks), each ranked; retry, then fall over."""
        last: ProviderError | None = None
        failed_on: str | None = None
        """The deployment that failed last: moving on from it is a fallback."""
        tried_any = False
        too_small: _ContextCeiling | None = None
        for route in tiers:
            ranked = self.rank(route, call)
            if route.hedge is not None and len(ranked) > 1 and route is tiers[0]:
                tried_any = True
                try:
                    served = await self._hedged(call, route, route.hedge, ranked[0], ranked[1], operation)
                except ProviderError as failure:
                    last = failure
                    failed_on = ranked[1].candidate.id
                    ranked = ranked[2:]
                else:
                    return served
            for deployment in ranked:
                tried_any = True
                if call.attempts_left <= 0 or anyio.current_time() >= call.deadline:
                    break
                if too_small is not None and too_small.excludes(deployment):
                    call.record.excluded.append(Exclusion(deployment.candidate.id, too_small.reason))
                    continue
                if failed_on is not None:
                    self.observers.fell_back(call.info, failed_on, deployment.candidate.id)
                try:
                    served = await self._with_retries(deployment, route.retry, call, operation)
                except ProviderError as failure:
                    last = failure
                    failed_on = deployment.candidate.id
                    if failure.kind is FailureKind.CONTENT_FILTERED and route.retry.content_filter == "surface":
                        raise self._give_up(call, failure) from failure
                    if isinstance(failure, ContextTooLong):
                        too_small = _ContextCeiling.after(deployment, failure, too_small)
                else:
                    if route is not tiers[0]:
                        call.record.fallback = route.name
                    return served
        if last is None:
            if not tried_any:
                circuit_only = all(e.reason.startswith("circuit") for e in call.record.excluded)
                now = anyio.current_time()
                waits = [self.circuits.rate_limited_for(e.candidate, now) for e in call.record.excluded]
                if call.record.excluded and all(w is not None for w in waits):
                    # every deployment asked us to wait: say so, rather than provoke more 429s
                    wait = min(w for w in waits if w is not None)
                    limited = RateLimited(
                        f"every deployment is rate-limited; the first is free in {wait:.1f}s",
                        status_code=429,
                        retry_after=wait,
                    )
                    raise self._give_up(call, limited) from None
                if call.record.excluded and circuit_only and not call.panic:
                    # Every circuit is open. Rejecting every call would lose them all; like a load
                    # balancer's panic mode, try each deployment once anyway (no retries).
                    logger.info(
                        "every circuit is open for %s: trying each deployment once", call.record.requested_model
                    )
                    call.panic = True
                    return await self._first_success(call, tiers, operation)
                raise no_candidates(call.record.requested_model, call.record.excluded, call.record)
            last = ProviderTimeout("the call's deadline passed before any attempt")
        skipped = {"circuit_open", "at_capacity"}
        if (
            not call.panic
            and all(a.outcome in skipped for a in call.record.attempts)
            and any(a.outcome == "circuit_open" for a in call.record.attempts)
        ):  # circuits opened between ranking and sending: the same panic rule applies
            call.panic = True
            return await self._first_success(call, tiers, operation)
        raise self._give_up(call, last) from last

    async def _hedged(
        self,
        call: Call,
        route: ModelRoute,
        hedge: HedgePolicy,
        first: Deployment,
        second: Deployment,
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
    ) -> _Served[T]:
        """Race the first candidate against a duplicate on the second, started only if the first has
        produced no token after the hedge delay (or has failed); the first to answer wins, the other
        is cancelled and its connection closed. Raises the last failure when both fail."""
        self._hedges.earn()
        delay = hedge.after_s
        if hedge.after_percentile is not None:
            observed = self.stats.first_token_percentile(
                first.candidate.id, stream=call.stream, percentile=hedge.after_percentile
            )
            delay = observed if observed is not None else delay
        if delay is None:  # a percentile with no samples yet and no fixed delay: don't hedge
            return await self._with_retries(first, route.retry, call, operation)
        winner: list[_Served[T]] = []
        failures: list[ProviderError] = []
        first_failed = anyio.Event()

        async def run(deployment: Deployment, scope: anyio.CancelScope, wait: bool) -> None:
            if wait:
                with anyio.move_on_after(delay):
                    await first_failed.wait()
                if winner or not (first_failed.is_set() or self._hedges.spend(hedge.max_extra_fraction)):
                    return
                if first_failed.is_set():  # not a duplicate: the next candidate after a failure
                    self.observers.fell_back(call.info, first.candidate.id, deployment.candidate.id)
                else:
                    call.record.hedged = True
            try:
                served = await self._attempt_once(deployment, call, operation)
            except ProviderError as failure:
                failures.append(failure)
                if not wait:
                    first_failed.set()
                return
            if winner:  # lost a photo finish: give back what it holds
                await self._discard(call, served)
                return
            winner.append(served)
            for other in call.record.attempts:  # still in flight: observers are told it lost, not "cancelled"
                if other is not served.attempt and other.sent and other.outcome == "ok":
                    other.outcome = "hedge_lost"
            scope.cancel()

        async with anyio.create_task_group() as race:
            race.start_soon(run, first, race.cancel_scope, False)
            race.start_soon(run, second, race.cancel_scope, True)
        for attempt in call.record.attempts:
            if attempt.outcome == "cancelled" and winner and attempt is not winner[0].attempt:
                attempt.outcome = "hedge_lost"
        if winner:
            return winner[0]
        raise failures[-1] if failures else ProviderTimeout("the hedged attempts were cancelled")

    async def _discard(self, call: Call, served: _Served[Any]) -> None:
        """Release a successful attempt nobody will use (the loser of a hedge)."""
        result = served.result
        if isinstance(result, _Opened):
            await result.upstream.aclose()
        now = anyio.current_time()
        await self._give_back(served.deployment.candidate.id, served.slot)
        self.stats.end(
            served.deployment.candidate.id,
            now,
            ok=True,
            seconds=now - served.started,
            paused_s=paused_s() - served.paused_at,
        )
        served.attempt.outcome = "hedge_lost"
        if isinstance(result, _Opened):  # a stream's attempt ends when it is closed; a completion's already has
            self.observers.attempt_ended(call.info, served.attempt)

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
        """Retry one deployment while it can help, within the call's attempts and deadline.

        The first attempt runs outside tenacity: the calls that succeed at once (nearly all) build no
        retry machinery, whose reference cycles the garbage collector would otherwise have to find (its
        pauses land in every in-flight call's latency, and so in the stats). A first failure is replayed
        into tenacity as its attempt 1, so backoff and stop see exactly what they would have."""
        try:
            return await self._attempt_once(deployment, call, operation)
        except ProviderError as failure:
            first_failure: ProviderError | None = failure

        def worth_retrying(error: BaseException) -> bool:
            return (
                isinstance(error, ProviderError)
                and error.retryable
                and (error.retry_after is None or error.retry_after <= retry.max_retry_after_s)
            )

        def out_of_budget(state: tenacity.RetryCallState) -> bool:
            now = anyio.current_time()
            return (
                call.panic
                or deployment.candidate.id in call.failed_probes  # a failed probe is one attempt, never retried
                or self._unhealthy(deployment.candidate.id, now)  # don't wait out a backoff only to be refused
                or state.attempt_number >= retry.attempts_per_deployment
                or call.attempts_left <= 0
                or now + state.upcoming_sleep >= call.deadline
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
                if first_failure is not None:
                    replayed, first_failure = first_failure, None
                    raise replayed
                return await self._attempt_once(deployment, call, operation)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _attempt_once(
        self,
        deployment: Deployment,
        call: Call,
        operation: Callable[[Deployment, dict[str, Any], Deadlines, Call], Awaitable[T]],
        *,
        body: dict[str, Any] | None = None,
    ) -> _Served[T]:
        """One try: prepare the body for this provider, send it, write the attempt down."""
        candidate = deployment.candidate
        started = anyio.current_time()
        paused_at = paused_s()
        timeouts = deployment.timeouts if call.timeouts is None else merge_timeouts(deployment.timeouts, call.timeouts)
        first_token_s, adapted = self._first_token_s(timeouts, candidate.id, call.stream)
        deadlines = Deadlines(
            connect_s=max(0.001, min(timeouts.connect_s, call.deadline - started)),
            first_token_at=started + first_token_s,
            stall_s=timeouts.stall_s,
            total_at=min(call.deadline, started + timeouts.total_s),
            response_at=started + first_token_s if adapted and not call.stream else None,
        )
        attempt = Attempt(candidate.backend, candidate.provider, candidate.model, "ok", 0.0)
        call.record.attempts.append(attempt)
        try:
            body = deployment.adapter.prepare_for(
                call.endpoint, body or {**call.body, "model": candidate.model}, stream=call.stream
            )
        except ProviderError as failure:
            _failed(attempt, failure, 0.0)
            attempt.sent = False
            raise
        admission = Admission.ADMITTED if call.panic else self.circuits.admit(candidate.id, started)
        probe = admission is Admission.PROBE
        if not admission:
            shut = Overloaded(
                f"{candidate.id}: {self.circuits.blocked(candidate.id, started)}; not sent", retryable=False
            )
            _failed(attempt, shut, 0.0)
            attempt.outcome, attempt.sent = "circuit_open", False
            raise shut
        cap = candidate.max_concurrency
        slot = await self.shared.take_slot(candidate.id, cap) if (self.shared and cap is not None) else None
        if (self.shared and cap is not None and slot is None) or not self.stats.try_begin(
            candidate.id, started, cap=cap
        ):
            if slot is not None and self.shared is not None:
                await self.shared.give_slot(candidate.id, slot)
            self.circuits.release(candidate.id, probe=probe)
            full = Overloaded(f"{candidate.id}: at its concurrency cap ({cap} in flight); not sent", retryable=False)
            _failed(attempt, full, 0.0)
            attempt.outcome, attempt.sent = "at_capacity", False
            raise full
        call.attempts_left -= 1
        self.observers.attempt_started(call.info, attempt)
        try:
            result = await operation(deployment, body, deadlines, call)
        except ProviderError as failure:
            now = anyio.current_time()
            self.stats.end(
                candidate.id, now, ok=False, seconds=now - started, stream=call.stream, paused_s=paused_s() - paused_at
            )
            _failed(attempt, failure, now - started)
            self.observers.attempt_ended(call.info, attempt)
            await self._give_back(candidate.id, slot)
            self._observe_failure(candidate.id, failure, now, probe=probe)
            if probe:
                call.failed_probes.add(candidate.id)
            raise
        except BaseException:
            now = anyio.current_time()
            self.stats.end(
                candidate.id, now, ok=False, seconds=now - started, stream=call.stream, paused_s=paused_s() - paused_at
            )
            if attempt.outcome != "hedge_lost":  # a hedge's winner marks the loser before cancelling it
                attempt.outcome = "cancelled"
            attempt.seconds = now - started
            self.observers.attempt_ended(call.info, attempt)
            self.circuits.release(candidate.id, probe=probe)
            await self._give_back(candidate.id, slot)
            raise
        if call.stream:  # the slot is held (and the attempt open) until the stream ends
            result_slot = slot
        else:
            await self._give_back(candidate.id, slot)
            result_slot = None
        self.circuits.record(candidate.id, anyio.current_time(), failure=None, probe=probe)
        attempt.seconds = anyio.current_time() - started
        if not call.stream:
            self.observers.attempt_ended(call.info, attempt)
        record = call.record
        record.backend, record.provider, record.model = candidate.backend, candidate.provider, candidate.model
        return _Served(deployment, attempt, started, result, result_slot, paused_at)

    def _unhealthy(self, candidate_id: str, now: float) -> bool:
        """Its circuit is open for its health (a 429's reset is waited out by the retry itself)."""
        return (
            self.circuits.blocked(candidate_id, now) is not None
            and self.circuits.rate_limited_for(candidate_id, now) is None
        )

    async def _give_back(self, candidate_id: str, slot: str | None) -> None:
        """Return a shared concurrency slot (no-op without shared state or a cap)."""
        if slot is not None and self.shared is not None:
            await self.shared.give_slot(candidate_id, slot)

    def _first_token_s(self, t: Timeouts, candidate_id: str, stream: bool) -> tuple[float, bool]:
        """The first-token deadline: configured, or adapted to the deployment's observed TTFT so a
        fast backend that goes quiet is abandoned in seconds and a slow-but-working one is not cut off."""
        if not t.adaptive_first_token:
            return t.first_token_s, False
        observed = self.stats.first_token_percentile(candidate_id, stream=stream, percentile=t.adaptive_percentile)
        if observed is None:
            return t.first_token_s, False
        return min(t.first_token_s, max(t.adaptive_floor_s, observed * t.adaptive_factor)), True

    def _observe_failure(self, candidate_id: str, failure: ProviderError, now: float, *, probe: bool) -> None:
        """What a failure says about the deployment's health and headroom."""
        self.circuits.record(
            candidate_id,
            now,
            failure=failure.kind,
            message=failure.message,
            retry_after=failure.retry_after,
            probe=probe,
        )
        if failure.headers:
            self.stats.observe_rate_limits(candidate_id, parse_rate_limits(failure.headers), now)
        if failure.kind is FailureKind.RATE_LIMITED and failure.retry_after is not None:
            self.stats.observe_retry_after(candidate_id, failure.retry_after, now)


class _HedgeBudget:
    """Keeps duplicates within a share of calls, over a decaying window of recent calls (about
    `1 / (1 - _DECAY)` of them), so a burst of slow calls can be hedged as long as the recent
    average stays within the share."""

    _DECAY = 0.999

    def __init__(self) -> None:
        self._calls = 0.0
        self._hedges = 0.0

    def earn(self) -> None:
        """A call that may hedge."""
        self._calls = self._calls * self._DECAY + 1.0
        self._hedges *= self._DECAY

    def spend(self, fraction: float) -> bool:
        """Allow one duplicate if that keeps duplicates ÷ calls within `fraction`."""
        if self._hedges + 1.0 <= fraction * self._calls:
            self._hedges += 1.0
            return True
        return False


@dataclass(slots=True)
class _ContextCeiling:
    """After a context-length failure: only deployments with a larger window are worth trying."""

    window: int | None
    models: set[str]
    reason: str

    @classmethod
    def after(
        cls, deployment: Deployment, failure: ContextTooLong, previous: _ContextCeiling | None
    ) -> _ContextCeiling:
        window = failure.context_window or deployment.serves.context_window
        models = {deployment.candidate.model} | (previous.models if previous else set())
        if previous is not None and previous.window is not None:
            window = max(window or 0, previous.window)
        stated = f"{window} tokens" if window else "its window"
        return cls(
            window,
            models,
            f"context window not larger than {deployment.candidate.id}'s ({stated}), which was too small",
        )

    def excludes(self, deployment: Deployment) -> bool:
        known = deployment.serves.context_window
        if known is not None and self.window is not None:
            return known <= self.window
        return deployment.candidate.model in self.models  # the same model: the same window


def _storable(choices: list[Any]) -> bool:
    """A finished answer that wasn't filtered: the only kind worth keeping."""
    return bool(choices) and all(getattr(c, "finish_reason", None) != "content_filter" for c in choices)


def _usage_of(usage: Any) -> Usage | None:
    """The route record's usage for a cached answer (what the answer used when it was made)."""
    if usage is None:
        return None
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None) or 0
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached, reasoning)


def _leg(served: _Served[_Opened], shared: SharedState | None = None) -> Leg:
    opened = served.result
    release = None
    if served.slot is not None and shared is not None:
        slot, candidate_id = served.slot, served.deployment.candidate.id

        async def release() -> None:
            await shared.give_slot(candidate_id, slot)

    return Leg(
        opened.upstream,
        opened.buffered,
        served.attempt,
        served.deployment.candidate.id,
        served.started,
        opened.first_token_at,
        release,
        served.paused_at,
        opened.paused_at_first_token,
    )


def _short_of_headroom(stats: DeploymentStats | None, tokens_needed: int) -> bool:
    """The provider's last rate-limit headers say this request would be refused before their reset."""
    if stats is None:
        return False
    if stats.limited_until is not None or (stats.remaining_requests is not None and stats.remaining_requests < 1):
        return True
    return stats.remaining_tokens is not None and stats.remaining_tokens < tokens_needed


def _limits(route: ModelRoute, hints: RouteHints) -> Limits:
    """The alias's constraints, overridden field by field by the call's hints."""
    c = route.constraints
    return Limits(
        max_cost_usd=hints.max_cost_usd if hints.max_cost_usd is not None else c.max_cost_usd,
        max_ttft_s=hints.max_ttft_s if hints.max_ttft_s is not None else c.max_ttft_s,
        max_input_per_mtok=hints.max_input_per_mtok if hints.max_input_per_mtok is not None else c.max_input_per_mtok,
        max_output_per_mtok=(
            hints.max_output_per_mtok if hints.max_output_per_mtok is not None else c.max_output_per_mtok
        ),
        only=hints.only or route.only,
        exclude=hints.exclude or route.exclude,
        require=hints.require,
    )


def _trace(
    alias: str, position: int, candidate: Any, view: StatsView, profile: RequestProfile, now: float
) -> RankedCandidate:
    """One line of the ranking trace: the inputs the policy saw for this candidate."""
    stats = view.get(candidate.id)
    limited = stats.limited_until if stats is not None else None
    return RankedCandidate(
        alias=alias,
        rank=position + 1,
        candidate=candidate.id,
        input_per_mtok=candidate.price.input_per_mtok if candidate.price else None,
        output_per_mtok=candidate.price.output_per_mtok if candidate.price else None,
        expected_cost_usd=expected_cost_usd(candidate, profile, stats),
        expected_ttft_s=expected_ttft_s(candidate, stats),
        expected_duration_s=expected_duration_s(candidate, stats, profile),
        expected_completion_s=expected_completion_s(candidate, stats, profile),
        load=load(candidate, stats),
        in_flight=stats.in_flight if stats else 0,
        limited_for_s=None if limited is None else limited - now,
    )


def _cached_share(completed: Completed | Answered) -> float | None:
    usage = completed.usage
    if usage is None or usage.prompt_tokens <= 0:
        return None
    return usage.cached_prompt_tokens / usage.prompt_tokens


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


def _json(data: bytes) -> Any:
    """JSON from an event's data, or None."""
    try:
        return json.loads(data)
    except ValueError:
        return None
