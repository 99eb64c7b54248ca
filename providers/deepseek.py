"""DeepSeek: the cheapest hosted backend; OpenAI wire with a few dialect quirks.

Facts: no rate-limit headers (concurrency caps show only as 429 bodies), 402 for an empty
balance, context overflow as a plain 400 recognised by its message, `reasoning_content`
beside `content`, cache hits counted in `prompt_cache_hit_tokens`, and `: keep-alive`
comments while a request waits in the queue.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from providers.base import OpenAICompatible
from providers.catalog import DEEPSEEK, ModelFacts, ModelPrice, chinese_days_off, deepseek_is_peak
from providers.errors import ContentFiltered, ProviderError, QuotaExceeded


class DeepSeekProvider(OpenAICompatible):
    """api.deepseek.com; key from DEEPSEEK_API_KEY."""

    kind = "deepseek"
    default_base_url = "https://api.deepseek.com"
    api_key_env = "DEEPSEEK_API_KEY"
    requires_api_key = True
    truncating_finish_reasons = OpenAICompatible.truncating_finish_reasons | {"insufficient_system_resource"}
    supports_prefill = True
    prefill_path = "/beta/chat/completions"  # chat prefix completion is a beta feature
    endpoints = frozenset({"chat", "completions", "responses"})  # no embeddings; FIM completions on /beta
    endpoint_paths: ClassVar[Mapping[str, str]] = {
        **OpenAICompatible.endpoint_paths,
        "completions": "/beta/completions",
    }
    keeps_response_state = False  # its Responses API is stateless: no `store`, no `previous_response_id`
    catalog: ClassVar[Mapping[str, ModelFacts]] = DEEPSEEK
    content_filter_signatures: ClassVar[tuple[str, ...]] = (
        *OpenAICompatible.content_filter_signatures,
        "content exists risk",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        chinese_days_off(datetime.now(UTC).year)  # load the holiday table now, not in the first ranking

    def continuation(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        """DeepSeek's chat prefix completion: the last assistant message carries `prefix: true`."""
        messages = [*body.get("messages", []), {"role": "assistant", "content": text, "prefix": True}]
        return {**body, "messages": messages}

    def price_at(self, model: str, when: datetime) -> ModelPrice | None:
        """Half price outside DeepSeek's peak hours (01–04 and 06–10 UTC on weekdays that are not
        Chinese holidays)."""
        facts = self.catalog.get(model)
        if facts is None:
            return None
        if facts.offpeak_price is not None and not deepseek_is_peak(when):
            return facts.offpeak_price
        return facts.price

    def error_class(self, status: int, message: str, code: str, type_: str) -> type[ProviderError]:
        """402 is an empty balance; a 429 concurrency cap tied to the balance is retryable."""
        if status == 402 or "insufficient balance" in message.lower():
            return QuotaExceeded
        if "content exists risk" in message.lower():
            return ContentFiltered
        return super().error_class(status, message, code, type_)
