"""inference-router: one OpenAI-compatible client that routes each call to the best backend.

    from router import AsyncRouter, route_of
    client = AsyncRouter.from_config("router.yaml")      # was: openai.AsyncOpenAI()
    reply = await client.chat.completions.create(model="gpt-oss-120b", messages=[...])
    print(route_of(reply).summary())

Names are imported on first use (PEP 562), so `import router` stays cheap: the openai types
it builds on take about half a second to import, paid only when a client is made.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from router.observe.logs import install as _install_logging

_install_logging()  # the `router` logger: a NullHandler, and redaction of every secret it might see

_EXPORTS = {
    "AsyncRouter": "router.client",
    "Router": "router.client",
    "Stream": "router.client",
    "ConfigError": "router.config",
    "RouterConfig": "router.config",
    "load_config": "router.config",
    "RouteHints": "router.path.hints",
    "Event": "router.path.events",
    "Observer": "router.path.events",
    "UsageRow": "router.observe.usage",
    "Attempt": "router.path.record",
    "RouteRecord": "router.path.record",
    "route_of": "router.path.record",
    "RouterStream": "router.path.streaming",
    **{
        name: "router.errors"
        for name in (
            "APIConnectionError",
            "APITimeoutError",
            "AuthenticationError",
            "BadRequestError",
            "CacheMissError",
            "ContentFilteredError",
            "ContextLengthExceededError",
            "InternalServerError",
            "NoCandidatesError",
            "NotFoundError",
            "OverloadedError",
            "PermissionDeniedError",
            "QuotaExceededError",
            "RateLimitError",
            "RouterErrorMixin",
            "StreamInterruptedError",
            "UnknownModelError",
            "UnprocessableEntityError",
        )
    },
}

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AsyncRouter",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "CacheMissError",
    "ConfigError",
    "ContentFilteredError",
    "ContextLengthExceededError",
    "Event",
    "InternalServerError",
    "NoCandidatesError",
    "NotFoundError",
    "Observer",
    "OverloadedError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "RouteHints",
    "RouteRecord",
    "Router",
    "RouterConfig",
    "RouterErrorMixin",
    "RouterStream",
    "Stream",
    "StreamInterruptedError",
    "UnknownModelError",
    "UnprocessableEntityError",
    "UsageRow",
    "load_config",
    "route_of",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from router.client import AsyncRouter, Router, Stream
    from router.config import ConfigError, RouterConfig, load_config
    from router.errors import (
        APIConnectionError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        CacheMissError,
        ContentFilteredError,
        ContextLengthExceededError,
        InternalServerError,
        NoCandidatesError,
        NotFoundError,
        OverloadedError,
        PermissionDeniedError,
        QuotaExceededError,
        RateLimitError,
        RouterErrorMixin,
        StreamInterruptedError,
        UnknownModelError,
        UnprocessableEntityError,
    )
    from router.observe.usage import UsageRow
    from router.path.events import Event, Observer
    from router.path.hints import RouteHints
    from router.path.record import Attempt, RouteRecord, route_of
    from router.path.streaming import RouterStream
