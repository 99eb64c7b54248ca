"""Self-hosted vLLM: an OpenAI server whose 503 means "queue full, try elsewhere".

Facts: 404 for a model name it doesn't serve, `{"error": "Unauthorized"}` as a bare string
on 401, 503 from admission control, `reasoning` on deltas, in-band `{"error": …}` events
with the HTTP status in `code`. Load is read from `/metrics` (policies issue).
"""

from providers.base import OpenAICompatible


class VLLMProvider(OpenAICompatible):
    """A vLLM server; `base_url` like http://host:8000/v1, key optional (`--api-key`)."""

    kind = "vllm"
    default_base_url = "http://127.0.0.1:8000/v1"
