"""Groq LPUs: very fast, strict about OpenAI fields, limits reported in Go-duration headers.

Facts: 400 for `logprobs`, `top_logprobs`, `logit_bias`, `messages[].name` and `n > 1`;
413 when one request can never fit the org's tokens-per-minute; 498 when the flex tier is
out of capacity; usage of a stream in `x_groq.usage` on the final chunk.
"""

from collections.abc import Mapping
from typing import Any, ClassVar

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers.base import OpenAICompatible, Usage, _extra, _usage
from providers.catalog import GROQ, ModelFacts
from providers.errors import Overloaded, ProviderError, QuotaExceeded, StreamBroken, Unsupported


class GroqProvider(OpenAICompatible):
    """api.groq.com/openai/v1; key from GROQ_API_KEY."""

    kind = "groq"
    default_base_url = "https://api.groq.com/openai/v1"
    api_key_env = "GROQ_API_KEY"
    requires_api_key = True
    rejected_fields: ClassVar[tuple[str, ...]] = ("logprobs", "top_logprobs", "logit_bias")
    catalog: ClassVar[Mapping[str, ModelFacts]] = GROQ
    endpoints = frozenset({"chat", "responses"})  # no live embedding model, no legacy completions
    keeps_response_state = False  # its Responses API (beta) takes `store: false` only

    def prepare(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """Refuse what Groq would 400 on; drop `name` on messages, which only labels a speaker."""
        if int(body.get("n") or 1) != 1:
            raise Unsupported("groq serves only n=1", status_code=400)
        messages = body.get("messages")
        if isinstance(messages, list) and any(isinstance(m, dict) and "name" in m for m in messages):
            body = {
                **body,
                "messages": [
                    {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m for m in messages
                ],
            }
        return super().prepare(body, stream=stream)

    def parse_chunk(self, event_type: bytes, data: bytes, headers: Mapping[str, str]) -> ChatCompletionChunk:
        """Groq reports why a stream stopped early in `x_groq.error`; that is a broken stream."""
        chunk = super().parse_chunk(event_type, data, headers)
        x_groq = _extra(chunk, "x_groq")
        if isinstance(x_groq, dict) and x_groq.get("error"):
            raise StreamBroken(f"{self.name}: stream stopped early: {x_groq['error']}")
        return chunk

    def error_class(self, status: int, message: str, code: str, type_: str) -> type[ProviderError]:
        """413 means the request exceeds the org's TPM outright; 498 is flex capacity."""
        if status == 413:
            return QuotaExceeded
        if status == 498 or code == "capacity_exceeded":
            return Overloaded
        return super().error_class(status, message, code, type_)

    def usage_of(self, response: ChatCompletion | ChatCompletionChunk) -> Usage | None:
        """Top-level usage when present, else `x_groq.usage` from the final stream chunk."""
        found = super().usage_of(response)
        if found is not None:
            return found
        x_groq = _extra(response, "x_groq")
        usage = x_groq.get("usage") if isinstance(x_groq, dict) else None
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        reasoning = usage.get("completion_tokens_details")
        return _usage(
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            usage.get("total_tokens"),
            details.get("cached_tokens") if isinstance(details, dict) else None,
            reasoning.get("reasoning_tokens") if isinstance(reasoning, dict) else None,
        )
