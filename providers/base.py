"""The OpenAI chat-completions wire, spoken over a shared httpx2 client.

Every backend kind is a small dialect of this class: base URL, auth, which request fields it
rejects, how its errors and usage look. Adapters know nothing of routing: they take a
request body and deadlines, and return a parsed response or raise a `ProviderError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar, cast

import anyio
import httpx2
import pydantic
import pydantic_core
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from providers.catalog import ModelFacts, ModelPrice
from providers.endpoints import ENDPOINTS, Answered, EventReading, RawEvent, check_answer, usage_from
from providers.errors import (
    AuthFailed,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextTooLong,
    ModelNotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamBroken,
    Unsupported,
)
from providers.http import WireResponse, post
from providers.ratelimits import RateLimitInfo, parse_rate_limits, parse_retry_after, retry_after_from_message
from providers.sse import SSEDeadline, SSELineTooLong, SSEReader

# After every choice has finished, wait this long for a late usage chunk or `[DONE]`.
_FINISH_GRACE_S = 0.1
_USAGE_GRACE_S = 2.0
# After `[DONE]`, read the end of the HTTP body for at most this long so the connection is reused.
_DRAIN_S = 0.1
_KEPT_ERROR_HEADERS = re.compile(r"^(retry-after|retry-after-ms|x-ratelimit-.*|x-request-id|x-should-retry)$")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Time limits for one attempt; `*_at` are absolute instants on the anyio clock."""

    connect_s: float
    first_token_at: float
    stall_s: float
    total_at: float
    response_at: float | None = None
    """Non-streamed: the whole body by then (None: by `total_at`). The router sets it once a
    deployment's latency is known, so a backend that sends headers and then nothing is left fast."""


@dataclass(slots=True)
class Usage:
    """Token counts normalised across providers (cached and reasoning tokens included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Completed:
    """A successful non-streamed answer with what the provider said about it."""

    completion: ChatCompletion
    usage: Usage | None
    rate_limits: RateLimitInfo


_CONTEXT_LIMIT = re.compile(
    r"maximum context length is (\d+)|limit is (\d+)|context size \((\d+) tokens\)|context window of (\d+)",
    re.IGNORECASE,
)


def _stated_context_window(message: str, error: Any) -> int | None:
    """The context window a context-length error states (`n_ctx` in llama.cpp's body, else the message)."""
    if isinstance(error, dict) and isinstance(error.get("n_ctx"), int):
        return int(error["n_ctx"])
    match = _CONTEXT_LIMIT.search(message)
    return int(next(g for g in match.groups() if g)) if match else None


def _number(value: Any) -> int:
    """A token count from JSON: a finite, non-negative number, else 0."""
    return _count(value) or 0


def _count(value: Any) -> int | None:
    """A token count from JSON, or None when it is missing, negative, non-finite or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _usage(prompt: Any, completion: Any, total: Any, cached: Any, reasoning: Any) -> Usage | None:
    """Normalised usage, or None (unknown) when a main count is missing or not a count: a broken
    report must not become negative or made-up spending."""
    counts = (_count(prompt), _count(completion), _count(total))
    if None in counts:
        return None
    p, c, t = cast(tuple[int, int, int], counts)
    return Usage(p, c, t, _number(cached), _number(reasoning))


def _extra(model: pydantic.BaseModel | None, name: str) -> Any:
    if model is None or model.model_extra is None:
        return None
    return model.model_extra.get(name)


class OpenAICompatible:
    """Any OpenAI-compatible chat-completions endpoint (kind `openai`)."""

    kind: ClassVar[str] = "openai"
    default_base_url: ClassVar[str | None] = None
    api_key_env: ClassVar[str | None] = None
    requires_api_key: ClassVar[bool] = False
    chat_path: ClassVar[str] = "/chat/completions"
    rejected_fields: ClassVar[tuple[str, ...]] = ()
    supports_stream_usage: ClassVar[bool] = True
    context_signatures: ClassVar[tuple[str, ...]] = (
        "maximum context length",
        "context_length_exceeded",
        "reduce the length of the messages",
        "exceed_context_size_error",
        "exceeds the available context size",
        "larger than the max context size",
        "context window",
    )
    content_filter_signatures: ClassVar[tuple[str, ...]] = ("content_filter", "content_policy_violation")
    truncating_finish_reasons: ClassVar[frozenset[str]] = frozenset({"abort", "error"})
    """Finish reasons that mean the server gave up on the answer (vLLM's `abort`, an `error`): a
    cut answer, never a finished one."""
    supports_prefill: ClassVar[bool] = False
    """Whether the server continues a trailing assistant message instead of answering anew."""
    prefill_path: ClassVar[str | None] = None
    """Where continuation requests go, when not the usual chat path (DeepSeek's beta endpoint)."""
    catalog: ClassVar[Mapping[str, ModelFacts]] = {}
    """Published prices and context windows of this provider's models (`providers/catalog.py`)."""
    endpoints: ClassVar[frozenset[str]] = frozenset(ENDPOINTS)
    """The endpoints this kind of backend serves (README "Endpoints"); a deployment's `endpoints:` overrides."""
    endpoint_paths: ClassVar[Mapping[str, str]] = {
        "chat": "/chat/completions",
        "completions": "/completions",
        "embeddings": "/embeddings",
        "responses": "/responses",
    }
    keeps_response_state: ClassVar[bool] = True
    """Whether its Responses API stores answers (`store`, `previous_response_id`, retrieval)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        url = base_url or self.default_base_url
        if not url:
            raise ValueError(f"provider {self.kind!r} needs a base_url")
        self.name = name or self.kind
        self.base_url = url.rstrip("/")
        self._url = self.base_url + self.chat_path
        self._api_key = api_key
        self._headers = {"content-type": "application/json", "accept": "application/json", **(headers or {})}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.base_url}>"

    # --- the dialect -------------------------------------------------------------------

    def prepare(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """Adapt an OpenAI request body to this provider, or raise `Unsupported` without sending."""
        for field in self.rejected_fields:
            if field in body:
                if body[field] is not None and body[field] is not False:
                    raise Unsupported(f"{self.kind} does not accept `{field}`", status_code=400)
                body = {k: v for k, v in body.items() if k != field}  # "off" is what omitting means
        if stream:
            body = {**body, "stream": True}
            if self.supports_stream_usage:
                options = dict(body.get("stream_options") or {})
                if not options.get("include_usage"):
                    options["include_usage"] = True
                    body["stream_options"] = options
        return body

    def context_window(self, model: str) -> int | None:
        """The model's context window in tokens, if the provider publishes it."""
        facts = self.catalog.get(model)
        return facts.context_window if facts else None

    def price_at(self, model: str, when: datetime) -> ModelPrice | None:
        """The list price in effect at `when`, if the provider publishes one."""
        facts = self.catalog.get(model)
        return facts.price if facts else None

    def continuation(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        """The body that asks this provider to continue `text` as the assistant's answer."""
        return {**body, "messages": [*body.get("messages", []), {"role": "assistant", "content": text}]}

    def check_finish(self, finish_reason: str) -> None:
        """Raise when a finish_reason means the provider cut the answer short (not `length`)."""
        if finish_reason in self.truncating_finish_reasons:
            raise ServerError(f"{self.name}: the provider stopped the answer early ({finish_reason})")

    def classify(self, status: int, body: Any, headers: Mapping[str, str]) -> ProviderError:
        """Turn an error response (or an in-band error event) into the shared taxonomy."""
        error = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or error)
            code, type_ = error.get("code"), error.get("type")
        else:
            message, code, type_ = str(error or f"HTTP {status}"), None, None
        if isinstance(code, int) and status == 200:
            status = code  # vLLM and llama.cpp put the HTTP status in in-band error events
        kept = {k: v for k, v in headers.items() if _KEPT_ERROR_HEADERS.match(k.lower())}
        retry_after = parse_retry_after(headers)
        if retry_after is None:
            retry_after = retry_after_from_message(message)
        cls = self.error_class(status, message, str(code or ""), str(type_ or ""))
        if self._api_key and len(self._api_key) >= 8 and self._api_key in str(body):  # some echo the key back
            message = message.replace(self._api_key, "[redacted]")
            body = json.loads(json.dumps(body).replace(self._api_key, "[redacted]"))
        failure = cls(f"{self.name}: {message}", status_code=status, retry_after=retry_after, body=body, headers=kept)
        if isinstance(failure, ContextTooLong):
            failure.context_window = _stated_context_window(message, error)
        return failure

    def error_class(self, status: int, message: str, code: str, type_: str) -> type[ProviderError]:
        """Pick the failure class; provider modules extend this with their own signatures."""
        text = f"{message} {code} {type_}".lower()
        if any(sig in text for sig in self.context_signatures):
            return ContextTooLong
        if any(sig in text for sig in self.content_filter_signatures):
            return ContentFiltered
        if status == 429:
            return RateLimited
        if status == 402:
            return QuotaExceeded
        if status in (401, 403):
            return AuthFailed
        if status == 404:
            return ModelNotFound
        if status == 408:
            return ProviderTimeout
        if status in (503, 529):
            return Overloaded
        if status >= 500:
            return ServerError
        return BadRequest

    def usage_of(self, response: ChatCompletion | ChatCompletionChunk) -> Usage | None:
        """Normalised usage from a response or chunk, or None when it carries none (or a broken one)."""
        usage = response.usage
        if not isinstance(usage, CompletionUsage):  # a lenient parse keeps whatever JSON was there
            return None
        cached = _number(getattr(usage.prompt_tokens_details, "cached_tokens", None))
        reasoning = getattr(usage.completion_tokens_details, "reasoning_tokens", None)
        return _usage(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            cached or _extra(usage, "prompt_cache_hit_tokens"),
            reasoning,
        )

    # --- the wire ----------------------------------------------------------------------

    def _missing_key(self) -> ProviderError | None:
        if self.requires_api_key and not self._api_key:
            hint = f"set {self.api_key_env} or " if self.api_key_env else ""
            return AuthFailed(f"{self.name}: no API key ({hint}give the backend an api_key)", status_code=401)
        return None

    async def _send(
        self,
        client: httpx2.AsyncClient,
        body: dict[str, Any],
        deadlines: Deadlines,
        *,
        stream: bool,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
        endpoint: str = "chat",
    ) -> WireResponse:
        missing = self._missing_key()
        if missing is not None:
            raise missing
        headers = self._stream_headers if stream else self._headers
        if extra_headers:
            headers = {**headers, **extra_headers}
        url = self._url if endpoint == "chat" else self.base_url + self.endpoint_paths[endpoint]
        if endpoint == "chat" and self.prefill_path and _ends_with_assistant(body):
            url = self.base_url + self.prefill_path
        content = pydantic_core.to_json(body)
        response: WireResponse | None = None
        failure: ProviderError | None = None
        try:
            with anyio.CancelScope(deadline=min(deadlines.first_token_at, deadlines.total_at)):
                response = await post(
                    client, url, content=content, headers=headers, params=extra_query, connect_s=deadlines.connect_s
                )
        except httpx2.TransportError as exc:
            failure = self._transport_failure(exc, deadlines)
        if failure is not None:
            raise failure  # outside the except: the httpx2 error holds the request, auth header included
        if response is None:
            raise ProviderTimeout(f"{self.name}: no response headers before the first-token deadline")
        if response.status_code >= 400:
            await self._raise_for_status(response, deadlines)
        return response

    def _transport_failure(self, exc: httpx2.TransportError, deadlines: Deadlines) -> ProviderError:
        """Name a transport error in the taxonomy; the caller raises it outside the except block."""
        if isinstance(exc, httpx2.ConnectTimeout):
            return ProviderTimeout(f"{self.name}: connect timed out after {deadlines.connect_s:g}s")
        if isinstance(exc, httpx2.ConnectError):
            text = str(exc).lower()
            refused = "refused" in text or "all connection attempts failed" in text
            return ConnectionFailed(f"{self.name}: cannot connect ({exc})", retryable=not refused)
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout(f"{self.name}: timed out ({exc})")
        return ConnectionFailed(f"{self.name}: connection failed ({exc})")

    async def _raise_for_status(self, response: WireResponse, deadlines: Deadlines) -> None:
        raw = b""
        try:
            with anyio.move_on_after(max(0.0, min(5.0, deadlines.total_at - anyio.current_time()))):
                raw = await response.aread()
        except httpx2.TransportError:
            pass
        finally:
            await response.aclose()
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode("utf-8", "replace")[:2000]
        raise self.classify(response.status_code, body, response.headers)

    async def complete(
        self,
        client: httpx2.AsyncClient,
        body: dict[str, Any],
        deadlines: Deadlines,
        *,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
    ) -> Completed:
        """Send a non-streamed request; headers must arrive by the first-token deadline."""
        response = await self._send(
            client, body, deadlines, stream=False, extra_headers=extra_headers, extra_query=extra_query
        )
        raw = await self._read_body(response, deadlines)
        completion = self._parse_completion(raw, response.headers)
        if not completion.choices:
            raise ServerError(f"{self.name}: the response has no choices: {raw[:200]!r}")
        for choice in completion.choices:
            self.check_finish(choice.finish_reason)
        return Completed(completion, self.usage_of(completion), parse_rate_limits(response.headers))

    async def _read_body(self, response: WireResponse, deadlines: Deadlines) -> bytes:
        """The whole body of a non-streamed answer, by the response deadline; a lost or late body raises."""
        raw: bytes | None = None
        lost: str | None = None
        try:
            with anyio.CancelScope(deadline=min(deadlines.total_at, deadlines.response_at or deadlines.total_at)):
                raw = await response.aread()
        except httpx2.TransportError as exc:
            lost = str(exc)
        finally:
            await response.aclose()
        if lost is not None:
            raise ConnectionFailed(f"{self.name}: connection lost while reading the response ({lost})")
        if raw is None:
            raise ProviderTimeout(f"{self.name}: response body not complete before the call deadline")
        return raw

    def _parse_completion(self, raw: bytes, headers: Mapping[str, str]) -> ChatCompletion:
        try:
            return ChatCompletion.model_validate_json(raw)
        except pydantic.ValidationError:
            pass
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ServerError(f"{self.name}: response is not JSON: {raw[:200]!r}") from exc
        if isinstance(data, dict) and "error" in data:
            failure = self.classify(200, data, headers)
            if type(failure) is BadRequest:  # an error in a 200 that names no cause: the server's, not the request's
                raise ServerError(f"{failure.message} (an error object in a 200 response)", body=failure.body)
            raise failure
        return _lenient(ChatCompletion, data, self.name)

    async def stream(
        self,
        client: httpx2.AsyncClient,
        body: dict[str, Any],
        deadlines: Deadlines,
        *,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
    ) -> ChunkStream:
        """Open a streamed request; the returned stream enforces first-token and stall deadlines."""
        response = await self._send(
            client, body, deadlines, stream=True, extra_headers=extra_headers, extra_query=extra_query
        )
        return ChunkStream(
            self, response, deadlines, choices=int(body.get("n") or 1), usage_expected=self.supports_stream_usage
        )

    # --- the other endpoints: answers passed on as they came ------------------------------

    def prepare_for(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """`prepare` for any endpoint: chat has its dialect; the others are sent as asked (streams
        of legacy completions ask for the usage chunk, as chat streams do)."""
        if endpoint == "chat":
            return self.prepare(body, stream=stream)
        if not stream:
            return body
        body = {**body, "stream": True}
        if endpoint == "completions" and self.supports_stream_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def answer(
        self,
        client: httpx2.AsyncClient,
        endpoint: str,
        body: dict[str, Any],
        deadlines: Deadlines,
        *,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
    ) -> Answered:
        """Send a non-streamed request to a non-chat endpoint; the answer must be whole and well-formed."""
        response = await self._send(
            client,
            body,
            deadlines,
            stream=False,
            extra_headers=extra_headers,
            extra_query=extra_query,
            endpoint=endpoint,
        )
        raw = await self._read_body(response, deadlines)
        try:
            data: Any = json.loads(raw)
        except ValueError:
            raise ServerError(f"{self.name}: response is not JSON: {raw[:200]!r}") from None
        checked = check_answer(self, endpoint, data)
        return Answered(raw, checked, usage_from(endpoint, checked, Usage), parse_rate_limits(response.headers))

    async def open_events(
        self,
        client: httpx2.AsyncClient,
        endpoint: str,
        body: dict[str, Any],
        deadlines: Deadlines,
        *,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, Any] | None = None,
    ) -> EventStream:
        """Open a streamed request to a non-chat endpoint (legacy completions, the Responses API)."""
        response = await self._send(
            client,
            body,
            deadlines,
            stream=True,
            extra_headers=extra_headers,
            extra_query=extra_query,
            endpoint=endpoint,
        )
        choices = int(body.get("n") or 1) if isinstance(body.get("n"), int) else 1
        return EventStream(self, response, deadlines, endpoint=endpoint, choices=choices)

    async def relay(
        self, client: httpx2.AsyncClient, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """A plain request with this backend's auth (fetching a stored Responses answer); an error raises."""
        missing = self._missing_key()
        if missing is not None:
            raise missing
        failure: ProviderError | None = None
        response: httpx2.Response | None = None
        try:
            response = await client.request(
                method, self.base_url + path, headers=self._headers, params=params, timeout=httpx2.Timeout(30.0)
            )
        except httpx2.TransportError as exc:
            failure = ConnectionFailed(f"{self.name}: connection failed ({exc})")
        if failure is not None or response is None:
            raise failure or ConnectionFailed(f"{self.name}: no response")
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:2000]
            raise self.classify(response.status_code, body, response.headers)
        return response.status_code, {"content-type": response.headers.get("content-type", "")}, response.content

    def parse_chunk(self, event_type: bytes, data: bytes, headers: Mapping[str, str]) -> ChatCompletionChunk:
        """One SSE data payload → a chunk; in-band errors and garbage raise."""
        if event_type != b"error":
            try:
                chunk = ChatCompletionChunk.model_validate_json(data)
            except pydantic.ValidationError:
                pass
            else:
                extra = chunk.model_extra
                if not extra or "error" not in extra:
                    return chunk
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise StreamBroken(f"{self.name}: malformed stream event: {data[:200]!r}") from exc
        if isinstance(parsed, dict) and ("error" in parsed or event_type == b"error"):
            status_code = parsed.get("status_code")
            status = status_code if isinstance(status_code, int) else 200
            return_error = self.classify(status, parsed, headers)
            if status == 200 and type(return_error) is BadRequest:
                raise StreamBroken(f"{self.name}: stream error event: {return_error.message}", body=parsed)
            raise return_error
        if not isinstance(parsed, dict):
            raise StreamBroken(f"{self.name}: malformed stream event: {data[:200]!r}")
        return _lenient(ChatCompletionChunk, parsed, self.name)


M = TypeVar("M", ChatCompletion, ChatCompletionChunk)


def _lenient(model: type[M], data: Any, name: str) -> M:
    """Build an openai type from JSON that doesn't validate strictly, as the openai SDK does, then
    check the parts the router reads: a shape it cannot use fails here, typed, not later as a crash."""
    failure = StreamBroken if model is ChatCompletionChunk else ServerError
    if not isinstance(data, dict) or "choices" not in data:
        raise failure(f"{name}: unexpected payload: {str(data)[:200]}")
    from openai._models import construct_type  # the SDK's own lenient builder

    built = cast(M, construct_type(type_=model, value=data))
    problem = _unreadable(built)
    if problem is not None:
        raise failure(f"{name}: unexpected payload ({problem}): {str(data)[:200]}")
    return built


def _unreadable(response: ChatCompletion | ChatCompletionChunk) -> str | None:
    """What of a leniently built response the router could not read as typed, or None."""
    choices: Any = response.choices
    if not isinstance(choices, list):
        return "choices is not a list"
    is_chunk = isinstance(response, ChatCompletionChunk)
    for choice in choices:
        if not isinstance(choice, ChunkChoice if is_chunk else Choice):
            return "a choice is not an object"
        if isinstance(choice.index, bool) or not isinstance(choice.index, int):
            return "a choice's index is not an integer"
        finish_types = (str, type(None)) if is_chunk else str  # a whole answer without one may have been cut
        if not isinstance(choice.finish_reason, finish_types):
            return "finish_reason is not a string"
        body: Any = getattr(choice, "delta" if is_chunk else "message")
        if not isinstance(body, ChoiceDelta if is_chunk else ChatCompletionMessage):
            return "delta/message is not an object"
        extra = body.model_extra or {}
        texts = (body.content, body.refusal, extra.get("reasoning_content"), extra.get("reasoning"))
        if not all(isinstance(text, (str, type(None))) for text in texts):
            return "a text field is not a string"
        calls = body.tool_calls
        if calls is not None and not (
            isinstance(calls, list) and all(isinstance(c, pydantic.BaseModel) for c in calls)
        ):
            return "tool_calls is not a list of objects"
    return None


def has_token(chunk: ChatCompletionChunk) -> bool:
    """Whether a chunk carries anything the caller would see: text, reasoning or a tool call."""
    for choice in chunk.choices:
        delta = choice.delta
        if delta.content or delta.tool_calls or delta.refusal or delta.function_call:
            return True
        extra = delta.model_extra
        if extra and (extra.get("reasoning_content") or extra.get("reasoning")):
            return True
    return False


class ChunkStream:
    """An upstream chat stream: parsed chunks, deadlines, and a faithful ending.

    Ends normally after `[DONE]` (once a choice has finished), or once every choice has finished
    and usage has arrived even if `[DONE]` never comes. Raises `StreamBroken` when the stream is
    cut before that, a data event is malformed, or no data arrives in time (keep-alives don't count).
    """

    def __init__(
        self,
        adapter: OpenAICompatible,
        response: WireResponse,
        deadlines: Deadlines,
        *,
        choices: int,
        usage_expected: bool,
    ) -> None:
        self.adapter = adapter
        self.response = response
        self.rate_limits = parse_rate_limits(response.headers)
        self.usage: Usage | None = None
        self.saw_token = False
        self.finish_reasons: dict[int, str] = {}
        self._deadlines = deadlines
        self._choices = choices
        self._usage_expected = usage_expected
        self._reader = SSEReader(response.aiter_bytes())
        self._last_data_at = anyio.current_time()
        self._closed = False

    def __aiter__(self) -> ChunkStream:
        return self

    @property
    def finished(self) -> bool:
        """Every choice has a finish_reason."""
        return len(self.finish_reasons) >= self._choices

    def _next_deadline(self) -> tuple[float, str]:
        d = self._deadlines
        if self.finished:
            grace = _FINISH_GRACE_S if (self.usage is not None or not self._usage_expected) else _USAGE_GRACE_S
            return min(d.total_at, anyio.current_time() + grace), "finish"
        if not self.saw_token:
            return min(d.first_token_at, d.total_at), "first_token"
        return min(self._last_data_at + d.stall_s, d.total_at), "stall"

    async def __anext__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopAsyncIteration
        deadline, phase = self._next_deadline()
        failure: ProviderError | None = None
        event: tuple[bytes, bytes] | None = None
        try:
            event = await self._reader.next(deadline)
        except SSEDeadline:
            if phase == "finish":  # everything arrived; the provider just never said [DONE]
                await self.aclose()
                raise StopAsyncIteration from None
            failure = self._deadline_failure(phase, deadline)
        except httpx2.TransportError as exc:
            failure = StreamBroken(f"{self.adapter.name}: stream cut: {exc or type(exc).__name__}")
        except SSELineTooLong as exc:
            failure = StreamBroken(f"{self.adapter.name}: malformed stream: {exc}")
        except BaseException:
            await self.aclose()
            raise
        if failure is not None:  # raised outside the except: the httpx2 error holds the request
            await self.aclose()
            raise failure
        if event is None:
            if self._reader.done:
                await self._reader.drain(anyio.current_time() + _DRAIN_S)  # lets the pool reuse the connection
            await self.aclose()
            if not self.finished and not (self._reader.done and self.finish_reasons):
                # `[DONE]` with no choice finished is a cut too (llama-cpp-python's interrupt_requests)
                ending = "[DONE] came" if self._reader.done else "connection closed"
                raise StreamBroken(f"{self.adapter.name}: stream cut: {ending} before the answer finished")
            raise StopAsyncIteration
        self._last_data_at = anyio.current_time()
        try:
            return self._accept(event[0], event[1])
        except ProviderError:
            await self.aclose()
            raise

    def _accept(self, event_type: bytes, data: bytes) -> ChatCompletionChunk:
        """One data event → the chunk it carries, noting finish reasons, the first token and usage."""
        chunk = self.adapter.parse_chunk(event_type, data, self.response.headers)
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                self.finish_reasons[choice.index] = choice.finish_reason
                self.adapter.check_finish(choice.finish_reason)
        if not self.saw_token and has_token(chunk):
            self.saw_token = True
        usage = self.adapter.usage_of(chunk)
        if usage is not None:
            self.usage = usage
        return chunk

    def _deadline_failure(self, phase: str, deadline: float) -> ProviderError:
        name = self.adapter.name
        if deadline >= self._deadlines.total_at:
            return ProviderTimeout(f"{name}: stream not finished before the call deadline")
        if phase == "first_token":
            return ProviderTimeout(f"{name}: no first token before the first-token deadline")
        return StreamBroken(f"{name}: stream stalled: no data for {self._deadlines.stall_s:g}s")

    async def aclose(self) -> None:
        """Release the connection now; safe to call more than once."""
        if not self._closed:
            self._closed = True
            await self.response.aclose()


class EventStream(ChunkStream):
    """A non-chat upstream stream (legacy completions, the Responses API): its events passed on as
    they came, with the same deadlines and the same faithful ending as a chat stream."""

    def __init__(
        self,
        adapter: OpenAICompatible,
        response: WireResponse,
        deadlines: Deadlines,
        *,
        endpoint: str,
        choices: int,
    ) -> None:
        super().__init__(adapter, response, deadlines, choices=choices, usage_expected=endpoint == "completions")
        self._reading = EventReading(adapter, endpoint, choices, Usage)
        self.finish_reasons = self._reading.finish_reasons

    @property
    def finished(self) -> bool:
        """The answer is whole (every choice finished, or the response's final event came)."""
        return self._reading.finished

    def _accept(self, event_type: bytes, data: bytes) -> RawEvent:  # type: ignore[override]
        event = self._reading.read(event_type, data)
        self.saw_token = self._reading.saw_token
        self.usage = self._reading.usage
        return event

    async def __anext__(self) -> RawEvent:  # type: ignore[override]
        return cast(RawEvent, await super().__anext__())


def _ends_with_assistant(body: dict[str, Any]) -> bool:
    """A chat body whose last message is the assistant's: a continuation (prefill) request."""
    messages = body.get("messages")
    return (
        bool(messages)
        and isinstance(messages, list)
        and isinstance(messages[-1], dict)
        and (messages[-1].get("role") == "assistant")
    )
