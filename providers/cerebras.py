"""Cerebras wafer-scale inference: OpenAI wire, float-second rate-limit headers per window.

Facts: 402 payment required, 503 service unavailable, context overflow as a 400 saying
"Please reduce the length of the messages", and mid-stream error frames sent with HTTP
status 200 carrying their real status in `status_code` (handled by the base parser).
"""

from collections.abc import Mapping
from typing import ClassVar

from providers.base import OpenAICompatible
from providers.catalog import CEREBRAS, ModelFacts


class CerebrasProvider(OpenAICompatible):
    """api.cerebras.ai/v1; key from CEREBRAS_API_KEY."""

    kind = "cerebras"
    endpoints = frozenset({"chat", "completions"})  # no embeddings; the Responses API is not documented
    default_base_url = "https://api.cerebras.ai/v1"
    api_key_env = "CEREBRAS_API_KEY"
    requires_api_key = True
    catalog: ClassVar[Mapping[str, ModelFacts]] = CEREBRAS
