"""Kind `openai`: any endpoint that speaks OpenAI chat completions (OpenAI itself, gateways, LM servers)."""

from providers.base import OpenAICompatible


class OpenAIProvider(OpenAICompatible):
    """A plain OpenAI-compatible endpoint; `base_url` is required, the key optional."""

    kind = "openai"
