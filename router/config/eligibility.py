"""Step 3a of the request path: which deployments may serve this request, and why not the others.

A deployment is excluded, with the reason written down, when the request uses something it
can't serve (tools, a JSON schema, streaming), when the prompt estimate plus `max_tokens`
exceeds its context window, when it breaks a price, cost or TTFT constraint, or when a hint
names it out. Rate-limit headroom does not exclude: it reorders (see `RequestPath.rank`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies import Candidate, RequestProfile, StatsView
from policies.estimates import expected_cost_usd, expected_ttft_s

DEFAULT_OUTPUT_TOKENS = 256
"""Expected completion length when a request sets no `max_tokens` (for cost and time estimates)."""
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What eligibility and policies need to know of a request, read once from its body."""

    prompt_tokens: int
    max_output_tokens: int | None
    uses_tools: bool
    uses_json_schema: bool
    stream: bool
    endpoint: str = "chat"
    """`chat`, `completions`, `embeddings` or `responses`."""
    needs_response_state: bool = False
    """A Responses request that continues a stored response (`previous_response_id`)."""

    def profile(self) -> RequestProfile:
        """The request as policies see it."""
        output = self.max_output_tokens if self.max_output_tokens is not None else DEFAULT_OUTPUT_TOKENS
        return RequestProfile(prompt_tokens=self.prompt_tokens, output_tokens=output, stream=self.stream)


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(part.get("text", "")) if isinstance(part, dict) else 0 for part in value)
    return 0


def _input_length(value: Any) -> int:
    """Characters in a `prompt` or `input` (a string, strings, token ids, or Responses input items)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return _CHARS_PER_TOKEN  # a token id
    if isinstance(value, list):
        return sum(_input_length(item) for item in value)
    if isinstance(value, dict):
        return _text_length(value.get("content")) + _input_length(value.get("text"))
    return 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate: about four characters a token, plus framing per message and tool schemas."""
    chars = sum(_input_length(body.get(name)) for name in ("prompt", "input", "instructions"))
    messages = body.get("messages") or []
    for message in messages:
        if isinstance(message, dict):
            chars += _text_length(message.get("content"))
            if message.get("tool_calls"):
                chars += len(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        chars += len(json.dumps(response_format))
    return chars // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE * len(messages)


def request_facts(body: Mapping[str, Any], *, stream: bool, endpoint: str = "chat") -> RequestFacts:
    """Read the facts of a request body (the OpenAI fields of any endpoint)."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    response_format = body.get("response_format")
    text_format = body.get("text")
    if isinstance(text_format, dict) and isinstance(text_format.get("format"), dict):
        response_format = text_format["format"]  # the Responses API's structured output
    return RequestFacts(
        prompt_tokens=estimate_prompt_tokens(body),
        max_output_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) else None,
        uses_tools=bool(body.get("tools")),
        uses_json_schema=isinstance(response_format, dict) and response_format.get("type") == "json_schema",
        stream=stream,
        endpoint=endpoint,
        needs_response_state=bool(body.get("previous_response_id")),
    )


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A deployment left out of this call, and why."""

    candidate: str
    reason: str


@dataclass(frozen=True, slots=True)
class Limits:
    """The constraints in force for one call: the alias's, overridden field by field by the call's hints."""

    max_cost_usd: float | None = None
    max_ttft_s: float | None = None
    max_input_per_mtok: float | None = None
    max_output_per_mtok: float | None = None
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    require: tuple[str, ...] = ()


def names_match(candidate: Candidate, names: Iterable[str]) -> bool:
    """Whether a hint's names (backend, provider kind or `backend/model`) cover this candidate."""
    return any(name in (candidate.backend, candidate.provider, candidate.id) for name in names)


@dataclass(frozen=True, slots=True)
class Serves:
    """What one deployment can take: capabilities and context window."""

    tools: bool = True
    json_schema: bool = True
    stream: bool = True
    context_window: int | None = None
    prefill: bool = False
    endpoints: frozenset[str] = frozenset({"chat", "completions", "embeddings", "responses"})
    response_state: bool = True
    """Its Responses API keeps answers, so `previous_response_id` can refer to them."""


def exclusion_reason(
    candidate: Candidate,
    serves: Serves,
    facts: RequestFacts,
    limits: Limits,
    stats: StatsView,
) -> str | None:
    """Why `candidate` may not serve this call, or None when it may."""
    if facts.endpoint not in serves.endpoints:
        return (
            f"does not serve the {facts.endpoint} endpoint ({candidate.provider} serves"
            f" {', '.join(sorted(serves.endpoints))}; a deployment's `endpoints:` overrides)"
        )
    if facts.needs_response_state and not serves.response_state:
        return "keeps no Responses state, so cannot continue `previous_response_id`"
    if limits.only and not names_match(candidate, limits.only):
        return "not in the `only` list (hint or rule)"
    if limits.exclude and names_match(candidate, limits.exclude):
        return "excluded by `exclude` (hint or rule)"
    needs = set(limits.require)
    if facts.uses_tools:
        needs.add("tools")
    if facts.uses_json_schema:
        needs.add("json_schema")
    if facts.stream:
        needs.add("stream")
    missing = sorted(n for n in needs if not getattr(serves, n))
    if missing:
        return f"does not support {', '.join(missing)}"
    if serves.context_window is not None:
        needed = facts.prompt_tokens + (facts.max_output_tokens or 0)
        if needed > serves.context_window:
            return (
                f"context window {serves.context_window} tokens < ~{facts.prompt_tokens} prompt"
                f" + {facts.max_output_tokens or 0} max_tokens"
            )
    price = candidate.price
    if limits.max_input_per_mtok is not None or limits.max_output_per_mtok is not None:
        if price is None:
            return "price unknown, so it cannot be shown to meet the price cap"
        if limits.max_input_per_mtok is not None and price.input_per_mtok > limits.max_input_per_mtok:
            return f"input ${price.input_per_mtok:g}/M > cap ${limits.max_input_per_mtok:g}/M"
        if limits.max_output_per_mtok is not None and price.output_per_mtok > limits.max_output_per_mtok:
            return f"output ${price.output_per_mtok:g}/M > cap ${limits.max_output_per_mtok:g}/M"
    observed = stats.get(candidate.id)
    if limits.max_cost_usd is not None:
        cost = expected_cost_usd(candidate, facts.profile(), observed)
        if cost is None:
            return "price unknown, so it cannot be shown to meet max_cost_usd"
        if cost > limits.max_cost_usd:
            return f"expected cost ${cost:.6f} > max_cost_usd ${limits.max_cost_usd:g}"
    if limits.max_ttft_s is not None:
        ttft = expected_ttft_s(candidate, observed)
        if ttft > limits.max_ttft_s:
            return f"expected TTFT {ttft:.2f}s > max_ttft_s {limits.max_ttft_s:g}s"
    return None
