"""Provider adapters: one per backend kind, all speaking the OpenAI chat-completions wire.

Adapters know base URLs, auth, dialects, error signatures and usage fields; they know
nothing of routing. `PROVIDERS` maps a config `provider:` kind to its adapter class.
"""

from providers.base import ChunkStream, Completed, Deadlines, EventStream, OpenAICompatible, Usage, has_token
from providers.cerebras import CerebrasProvider
from providers.deepseek import DeepSeekProvider
from providers.endpoints import ENDPOINTS, Answered, Endpoint, RawEvent
from providers.errors import (
    AuthFailed,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextTooLong,
    FailureKind,
    ModelNotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamBroken,
    Unsupported,
)
from providers.groq import GroqProvider
from providers.llamacpp import LlamaCppProvider
from providers.openai_compat import OpenAIProvider
from providers.ratelimits import RateLimitInfo, RateLimitWindow, parse_duration, parse_rate_limits, parse_retry_after
from providers.vllm import VLLMProvider

PROVIDERS: dict[str, type[OpenAICompatible]] = {
    cls.kind: cls
    for cls in (DeepSeekProvider, GroqProvider, CerebrasProvider, VLLMProvider, LlamaCppProvider, OpenAIProvider)
}

__all__ = [
    "ENDPOINTS",
    "PROVIDERS",
    "Answered",
    "AuthFailed",
    "BadRequest",
    "CerebrasProvider",
    "ChunkStream",
    "Completed",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextTooLong",
    "Deadlines",
    "DeepSeekProvider",
    "Endpoint",
    "EventStream",
    "FailureKind",
    "GroqProvider",
    "LlamaCppProvider",
    "ModelNotFound",
    "OpenAICompatible",
    "OpenAIProvider",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "QuotaExceeded",
    "RateLimitInfo",
    "RateLimitWindow",
    "RateLimited",
    "RawEvent",
    "ServerError",
    "StreamBroken",
    "Unsupported",
    "Usage",
    "VLLMProvider",
    "has_token",
    "parse_duration",
    "parse_rate_limits",
    "parse_retry_after",
]
