"""The OpenAI endpoints beyond chat completions: legacy completions, embeddings, the Responses API.

Their answers are passed on as the provider sent them (the caller's openai client parses them);
what the router needs of them is read here: usage for cost and stats, whether an answer is
complete, and for streams where the first token is and where the answer ends. A stream that
stops before its end is a `StreamBroken`, never a short answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from providers.errors import BadRequest, ProviderError, ServerError, StreamBroken
from providers.ratelimits import RateLimitInfo

if TYPE_CHECKING:
    from providers.base import OpenAICompatible, Usage

Endpoint = Literal["chat", "completions", "embeddings", "responses"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions", "embeddings", "responses")
"""Every endpoint the router routes, by the name a deployment's `endpoints:` list uses."""

STREAMABLE: frozenset[str] = frozenset({"chat", "completions", "responses"})
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete"})
_RESPONSE_FAILS = frozenset({"response.failed", "error"})


@dataclass
class Answered:
    """A non-chat endpoint's successful answer: the provider's JSON bytes, passed on as they came."""

    content: bytes
    data: dict[str, Any]
    usage: Usage | None
    rate_limits: RateLimitInfo


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One server-sent event of a non-chat stream, passed on as it came."""

    event: bytes
    """The `event:` name (the Responses API names every event), or empty."""
    data: bytes
    choices: ClassVar[tuple[()]] = ()
    usage: ClassVar[None] = None

    def encode(self) -> bytes:
        """The event as SSE bytes again."""
        head = b"event: " + self.event + b"\n" if self.event else b""
        return head + b"data: " + self.data + b"\n\n"


def _int(value: Any) -> int:
    """A token count, 0 for anything that isn't a non-negative number (bad upstream bytes included)."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def _detail(usage: dict[str, Any], name: str, field: str) -> int:
    details = usage.get(name)
    return _int(details.get(field)) if isinstance(details, dict) else 0


def usage_from(endpoint: str, data: Any, usage_cls: type[Usage]) -> Usage | None:
    """Normalised usage from an answer's JSON (`input_tokens`/`output_tokens` in the Responses API)."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    if endpoint == "responses":
        prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        cached = _detail(usage, "input_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
    else:
        prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    total = _int(usage.get("total_tokens")) or prompt + completion
    return usage_cls(prompt, completion, total, cached, reasoning)


def check_answer(adapter: OpenAICompatible, endpoint: str, data: Any) -> dict[str, Any]:
    """The answer's JSON if it is a complete answer of this endpoint; else the failure it is."""
    if not isinstance(data, dict):
        raise ServerError(f"{adapter.name}: unexpected {endpoint} payload: {str(data)[:200]}")
    if "error" in data and data["error"] is not None and not (endpoint == "responses" and "output" in data):
        raise adapter.classify(200, data, {})
    if endpoint == "embeddings":
        if not isinstance(data.get("data"), list):
            raise ServerError(f"{adapter.name}: embeddings answer without `data`: {str(data)[:200]}")
    elif endpoint == "completions":
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ServerError(f"{adapter.name}: completions answer without `choices`: {str(data)[:200]}")
        for choice in choices:
            finish = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(finish, str):
                adapter.check_finish(finish)
    elif endpoint == "responses":
        status = data.get("status")
        if status == "failed":
            raise _response_failure(adapter, data.get("error"))
        if not isinstance(data.get("output"), list):
            raise ServerError(f"{adapter.name}: Responses answer without `output`: {str(data)[:200]}")
    return data


def _response_failure(adapter: OpenAICompatible, error: Any) -> ProviderError:
    """A Responses API `failed` status or `error` event, in the shared taxonomy."""
    failure = adapter.classify(200, {"error": error} if isinstance(error, dict) else error, {})
    if type(failure) is BadRequest:  # an in-band failure after a 200 is the provider's
        return ServerError(failure.message, body=failure.body)
    return failure


class EventReading:
    """What a non-chat stream's events say: where its first token is, its usage, and its end.

    Legacy completions stream like chat (choices with `text`, a finish reason each, `[DONE]`);
    the Responses API names its events and ends with `response.completed` or `.incomplete`.
    """

    def __init__(self, adapter: OpenAICompatible, endpoint: str, choices: int, usage_cls: type[Usage]) -> None:
        self._adapter = adapter
        self._usage_cls = usage_cls
        self._endpoint = endpoint
        self._choices = choices
        self.finish_reasons: dict[int, str] = {}
        self.ended = False
        self.saw_token = False
        self.usage: Usage | None = None

    @property
    def finished(self) -> bool:
        """The answer is whole: every choice finished, or the response's last event came."""
        if self._endpoint == "responses":
            return self.ended
        return len(self.finish_reasons) >= self._choices

    def read(self, event_type: bytes, data: bytes) -> RawEvent:
        """Take one event; raise when it is malformed or an in-band failure."""
        try:
            parsed = json.loads(data)
        except ValueError:
            raise StreamBroken(f"{self._adapter.name}: malformed stream event: {data[:200]!r}") from None
        if not isinstance(parsed, dict):
            raise StreamBroken(f"{self._adapter.name}: malformed stream event: {data[:200]!r}")
        if self._endpoint == "responses":
            self._read_response_event(event_type, parsed)
        else:
            self._read_completion_chunk(event_type, parsed)
        return RawEvent(event_type, data)

    def _read_response_event(self, event_type: bytes, parsed: dict[str, Any]) -> None:
        kind = parsed.get("type") or event_type.decode("utf-8", "replace")
        if kind in _RESPONSE_FAILS:
            error = parsed.get("error")
            response = parsed.get("response")
            if error is None and isinstance(response, dict):
                error = response.get("error")
            raise _response_failure(self._adapter, error if error is not None else parsed)
        if isinstance(kind, str) and kind.endswith(".delta"):
            self.saw_token = True
        if kind in _RESPONSE_ENDS:
            self.ended = True
            self.usage = usage_from("responses", parsed.get("response"), self._usage_cls) or self.usage

    def _read_completion_chunk(self, event_type: bytes, parsed: dict[str, Any]) -> None:
        if "error" in parsed or event_type == b"error":
            failure = self._adapter.classify(200, parsed, {})
            if type(failure) is BadRequest:
                raise StreamBroken(f"{self._adapter.name}: stream error event: {failure.message}", body=parsed)
            raise failure
        choices = parsed.get("choices")
        if not isinstance(choices, list):
            raise StreamBroken(f"{self._adapter.name}: unexpected stream payload: {str(parsed)[:200]}")
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamBroken(f"{self._adapter.name}: unexpected stream choice: {str(choice)[:200]}")
            if choice.get("text"):
                self.saw_token = True
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._adapter.check_finish(finish)
                index = choice.get("index")
                self.finish_reasons[index if isinstance(index, int) else 0] = finish
        self.usage = usage_from("completions", parsed, self._usage_cls) or self.usage
