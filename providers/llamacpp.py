"""Self-hosted llama.cpp `llama-server`: OpenAI wire plus its own health and load endpoints.

Facts: 503 `Loading model` while starting, 400 `exceed_context_size_error` when the prompt
overflows the slot's context, in-band `data: {"error": …}` events after the first token
(the stream then ends without `[DONE]`), `:` pings every 30 s of silence.
"""

from providers.base import OpenAICompatible


class LlamaCppProvider(OpenAICompatible):
    """A llama.cpp server; `base_url` like http://host:8080/v1, key optional (`--api-key`)."""

    kind = "llamacpp"
    default_base_url = "http://127.0.0.1:8080/v1"
