"""One taxonomy of upstream failures, shared by every provider adapter.

Adapters turn HTTP statuses, error bodies, transport errors and broken streams into these
classes; the router decides from them whether to retry, fall over or surface the failure.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class FailureKind(StrEnum):
    """What went wrong, independent of which provider said it."""

    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTERED = "content_filtered"
    QUOTA = "quota"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"
    SERVER_ERROR = "server_error"
    STREAM_BROKEN = "stream_broken"


class ProviderError(Exception):
    """A failed call to one backend.

    `retryable` says whether trying the *same* deployment again can help; falling over to
    another deployment is always allowed. `retry_after` is the provider's own wait hint, in
    seconds, when it gave one.
    """

    kind: ClassVar[FailureKind] = FailureKind.SERVER_ERROR
    retryable_by_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.body = body
        self.headers = headers or {}
        self.retryable = self.retryable_by_default if retryable is None else retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code})"


class RateLimited(ProviderError):
    """429 and friends: the provider asks us to slow down, often saying for how long."""

    kind = FailureKind.RATE_LIMITED
    retryable_by_default = True


class Overloaded(ProviderError):
    """The server is up but cannot take work now (vLLM queue full, llama.cpp loading, Groq 498)."""

    kind = FailureKind.OVERLOADED
    retryable_by_default = True


class ProviderTimeout(ProviderError):
    """No answer within a deadline; a silent backend is not worth waiting on twice."""

    kind = FailureKind.TIMEOUT
    retryable_by_default = False


class ConnectionFailed(ProviderError):
    """The TCP/TLS connection failed or was reset; a reset is transient, a refusal is not."""

    kind = FailureKind.CONNECTION
    retryable_by_default = True


class ContextTooLong(ProviderError):
    """Prompt plus requested output do not fit this model's context window.

    `context_window` is the limit the provider stated, when its message or body gives one.
    """

    kind = FailureKind.CONTEXT_TOO_LONG
    context_window: int | None = None


class ContentFiltered(ProviderError):
    """The provider refused the content on policy grounds."""

    kind = FailureKind.CONTENT_FILTERED


class QuotaExceeded(ProviderError):
    """Balance or quota exhausted, or a request that can never fit the account's limits."""

    kind = FailureKind.QUOTA


class AuthFailed(ProviderError):
    """Missing, wrong or unauthorised API key."""

    kind = FailureKind.AUTH


class ModelNotFound(ProviderError):
    """The backend does not serve the requested model id."""

    kind = FailureKind.NOT_FOUND


class BadRequest(ProviderError):
    """The provider rejected the request as malformed or invalid."""

    kind = FailureKind.BAD_REQUEST


class Unsupported(BadRequest):
    """The request uses a feature this provider cannot serve; nothing was sent."""

    kind = FailureKind.UNSUPPORTED


class ServerError(ProviderError):
    """A transient 5xx on the provider's side."""

    kind = FailureKind.SERVER_ERROR
    retryable_by_default = True


class StreamBroken(ProviderError):
    """A stream was cut, stalled, sent a malformed event or an in-band error."""

    kind = FailureKind.STREAM_BROKEN
    retryable_by_default = True
