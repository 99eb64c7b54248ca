"""Self-hosted vLLM: an OpenAI server whose 503 means "queue full, try elsewhere".

Facts: 404 for a model name it doesn't serve, `{"error": "Unauthorized"}` as a bare string
on 401, 503 from admission control, `reasoning` on deltas, in-band `{"error": …}` events
with the HTTP status in `code`. Load is read from `/metrics` (policies issue).
"""

import math
from typing import Any

import httpx2

from providers.base import OpenAICompatible
from providers.load import PROMETHEUS_ACCEPT, ServerLoad, fetch, metric_values, total, within

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # the second is pre-0.10


class VLLMProvider(OpenAICompatible):
    """A vLLM server; `base_url` like http://host:8000/v1, key optional (`--api-key`)."""

    kind = "vllm"
    default_base_url = "http://127.0.0.1:8000/v1"
    supports_prefill = True
    endpoints = frozenset({"chat", "completions", "responses"})  # embeddings: a pooling model, declared

    def continuation(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        """vLLM continues the final assistant message when asked to (`continue_final_message`)."""
        continued = super().continuation(body, text)
        return {**continued, "continue_final_message": True, "add_generation_prompt": False}

    async def read_load(self, client: httpx2.AsyncClient, *, timeout_s: float) -> ServerLoad:
        """Running/waiting requests and KV-cache use from the Prometheus `/metrics` (open, no key needed)."""
        response = await within(
            timeout_s, self.name, fetch(self, client, "/metrics", timeout_s=timeout_s, accept=PROMETHEUS_ACCEPT)
        )
        assert response is not None
        return vllm_load(response.text)


def vllm_load(text: str) -> ServerLoad:
    """Counts summed over the `engine`/`model_name` label sets; KV usage is their mean (it's a 0–1 ratio)."""
    values = metric_values(text, (_RUNNING, _WAITING, *_KV_USAGE))
    kv = next((values[name] for name in _KV_USAGE if name in values), None)
    usage = math.fsum(kv) / len(kv) if kv else None
    return ServerLoad(
        running=total(values.get(_RUNNING)),
        waiting=total(values.get(_WAITING)),
        slots=None,
        kv_cache_usage=usage if usage is not None and math.isfinite(usage) else None,
    )
