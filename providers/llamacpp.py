"""Self-hosted llama.cpp `llama-server`: OpenAI wire plus its own health and load endpoints.

Facts: 503 `Loading model` while starting, 400 `exceed_context_size_error` when the prompt
overflows the slot's context, in-band `data: {"error": …}` events after the first token
(the stream then ends without `[DONE]`), `:` pings every 30 s of silence. `/metrics` (only
with `--metrics`, else 501), `/slots` and `/props` need the API key when the server has one.
"""

import httpx2

from providers.base import OpenAICompatible
from providers.errors import ProviderError, ServerError
from providers.load import PROMETHEUS_ACCEPT, ServerLoad, fetch, json_of, metric_values, total, within

_RUNNING = "llamacpp:requests_processing"  # busy slots
_WAITING = "llamacpp:requests_deferred"  # tasks queued for a free slot


class LlamaCppProvider(OpenAICompatible):
    """A llama.cpp server; `base_url` like http://host:8080/v1, key optional (`--api-key`)."""

    kind = "llamacpp"
    endpoints = frozenset({"chat", "completions", "responses"})  # embeddings: `--embeddings`, declared
    keeps_response_state = False  # it translates Responses to chat and rejects `previous_response_id`
    default_base_url = "http://127.0.0.1:8080/v1"
    supports_prefill = True  # a trailing assistant message is continued, not answered

    # What a server can't change without a restart, learnt on the first read; dropped on any failure.
    _total_slots: int | None = None
    _metrics_off: bool = False

    async def read_load(self, client: httpx2.AsyncClient, *, timeout_s: float) -> ServerLoad:
        """Busy slots and queue from `/metrics`, slot count from `/props`; `/slots` without `--metrics`."""
        try:
            return await within(timeout_s, self.name, self._read_load(client, timeout_s))
        except ProviderError:
            self._total_slots, self._metrics_off = None, False  # it may come back with other settings
            raise

    async def _read_load(self, client: httpx2.AsyncClient, timeout_s: float) -> ServerLoad:
        if self._total_slots is None:
            props = await fetch(self, client, "/props", timeout_s=timeout_s)
            assert props is not None
            body = json_of(props, self.name)
            slots = body.get("total_slots") if isinstance(body, dict) else None
            if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0:
                self._total_slots = slots
        if not self._metrics_off:
            metrics = await fetch(
                self, client, "/metrics", timeout_s=timeout_s, accept=PROMETHEUS_ACCEPT, missing_ok=True
            )
            if metrics is not None:
                values = metric_values(metrics.text, (_RUNNING, _WAITING))
                return ServerLoad(total(values.get(_RUNNING)), total(values.get(_WAITING)), self._total_slots, None)
            self._metrics_off = True  # started without --metrics
        return await self._read_slots(client, timeout_s)

    async def _read_slots(self, client: httpx2.AsyncClient, timeout_s: float) -> ServerLoad:
        """Busy slots from `/slots` (no queue length there); all None but `slots` if that is off too."""
        response = await fetch(self, client, "/slots", timeout_s=timeout_s, missing_ok=True)
        if response is None:
            return ServerLoad(None, None, self._total_slots, None)
        slots = json_of(response, self.name)
        if not isinstance(slots, list) or not all(isinstance(slot, dict) for slot in slots):
            raise ServerError(f"{self.name}: unexpected /slots payload: {response.text[:200]!r}")
        busy = sum(1 for slot in slots if slot.get("is_processing") is True)
        return ServerLoad(busy, None, self._total_slots or len(slots) or None, None)
