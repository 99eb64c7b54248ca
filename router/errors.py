"""Exceptions raised to callers: subclasses of openai's, so existing `except` clauses work.

Each carries `.attempts` (every try, in order) and `.route` (the route record so far). The
class matches the final failure: a rate limit raises a subclass of `openai.RateLimitError`,
a dead backend `openai.APIConnectionError`, and so on. See README "Errors".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx2
import openai

from providers import FailureKind, ProviderError, Usage

if TYPE_CHECKING:  # types only: the exception tree sits below every other part of the router
    from router.config.eligibility import Exclusion
    from router.path.record import Attempt, RouteRecord

_NOWHERE = "http://inference-router.invalid/chat/completions"


class RouterErrorMixin:
    """What every router exception adds to its openai base class."""

    attempts: list[Attempt]
    route: RouteRecord | None


class BadRequestError(RouterErrorMixin, openai.BadRequestError):
    """The request was rejected as invalid (HTTP 400)."""


class ContextLengthExceededError(BadRequestError):
    """The prompt plus `max_tokens` does not fit any candidate's context window."""


class ContentFilteredError(BadRequestError):
    """A provider refused the content on policy grounds; its reason is in the message."""


class UnprocessableEntityError(RouterErrorMixin, openai.UnprocessableEntityError):
    """The provider understood the request but could not process it (HTTP 422)."""


class AuthenticationError(RouterErrorMixin, openai.AuthenticationError):
    """A missing or rejected API key (HTTP 401)."""


class PermissionDeniedError(RouterErrorMixin, openai.PermissionDeniedError):
    """The key is valid but not allowed this (HTTP 403)."""


class NotFoundError(RouterErrorMixin, openai.NotFoundError):
    """The backend does not serve the model (HTTP 404)."""


class UnknownModelError(NotFoundError):
    """The requested model is neither a configured alias nor a deployment's model id."""


class RateLimitError(RouterErrorMixin, openai.RateLimitError):
    """Every candidate was rate-limited (HTTP 429); `.retry_after` is the shortest wait seen."""

    retry_after: float | None = None


class QuotaExceededError(RouterErrorMixin, openai.APIStatusError):
    """Balance or quota exhausted (DeepSeek 402, Cerebras 402, Groq 413)."""


class InternalServerError(RouterErrorMixin, openai.InternalServerError):
    """The provider failed (HTTP 5xx)."""


class OverloadedError(InternalServerError):
    """The provider is up but has no capacity now (503 queue full or loading, Groq 498)."""


class APIConnectionError(RouterErrorMixin, openai.APIConnectionError):
    """No connection could be made, or it was lost before a response."""


class APITimeoutError(RouterErrorMixin, openai.APITimeoutError):
    """A deadline passed: connect, first token, stall or the call's total."""


class StreamInterruptedError(RouterErrorMixin, openai.APIError):
    """A stream broke after the caller had seen part of the answer: never a silent truncation.

    `.partial_text` holds what was delivered, `.usage` what the provider reported so far.
    """

    partial_text: str = ""
    usage: Usage | None = None


class CacheMissError(RouterErrorMixin, openai.APIStatusError):
    """`route={"cache": "only-if-cached"}` and the answer is not in the cache (HTTP 504, as in HTTP caching)."""


class NoCandidatesError(BadRequestError):
    """Every deployment was excluded before any was tried (e.g. by `route={"exclude": …}`)."""


_STATUS_CLASSES: dict[FailureKind, type[openai.APIStatusError]] = {
    FailureKind.RATE_LIMITED: RateLimitError,
    FailureKind.OVERLOADED: OverloadedError,
    FailureKind.CONTEXT_TOO_LONG: ContextLengthExceededError,
    FailureKind.CONTENT_FILTERED: ContentFilteredError,
    FailureKind.QUOTA: QuotaExceededError,
    FailureKind.NOT_FOUND: NotFoundError,
    FailureKind.UNSUPPORTED: BadRequestError,
    FailureKind.SERVER_ERROR: InternalServerError,
}
_DEFAULT_STATUS = {
    FailureKind.RATE_LIMITED: 429,
    FailureKind.OVERLOADED: 503,
    FailureKind.CONTEXT_TOO_LONG: 400,
    FailureKind.CONTENT_FILTERED: 400,
    FailureKind.QUOTA: 402,
    FailureKind.AUTH: 401,
    FailureKind.NOT_FOUND: 404,
    FailureKind.BAD_REQUEST: 400,
    FailureKind.UNSUPPORTED: 400,
    FailureKind.SERVER_ERROR: 500,
}


def _request(url: str | None) -> httpx2.Request:
    """A request object for the exception that carries the URL but never the auth header."""
    return httpx2.Request("POST", url or _NOWHERE)


def status_error(
    cls: type[openai.APIStatusError],
    message: str,
    status: int,
    *,
    url: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> openai.APIStatusError:
    """Build an openai status error without a real HTTP exchange behind it."""
    response = httpx2.Response(status, headers=headers or {}, request=_request(url))
    return cls(message, response=response, body=body)


def _attach(error: Any, attempts: list[Attempt], route: RouteRecord | None) -> Any:
    error.attempts = list(attempts)
    error.route = route
    return error


def _tried(attempts: list[Attempt]) -> str:
    if not attempts:
        return ""
    listed = "; ".join(f"{a.backend}/{a.model}: {a.outcome}" for a in attempts[-6:])
    more = f"{len(attempts) - 6} earlier, " if len(attempts) > 6 else ""
    return f" (after {len(attempts)} attempt{'s' if len(attempts) != 1 else ''}: {more}{listed})"


def to_caller_error(
    failure: ProviderError, attempts: list[Attempt], route: RouteRecord | None, *, url: str | None = None
) -> openai.APIError:
    """The openai-compatible exception for a call whose last failure was `failure`."""
    message = failure.message + _tried(attempts)
    body = failure.body.get("error", failure.body) if isinstance(failure.body, dict) else failure.body
    kind = failure.kind
    error: openai.APIError
    if kind == FailureKind.TIMEOUT:
        error = APITimeoutError(request=_request(url))
        error.message = message
        error.args = (message,)
    elif kind == FailureKind.CONNECTION:
        error = APIConnectionError(message=message, request=_request(url))
    elif kind == FailureKind.STREAM_BROKEN:
        error = StreamInterruptedError(message, _request(url), body=body)
    else:
        status = failure.status_code or _DEFAULT_STATUS.get(kind, 500)
        cls: type[openai.APIStatusError]
        if kind == FailureKind.AUTH:
            cls = PermissionDeniedError if status == 403 else AuthenticationError
        elif kind == FailureKind.BAD_REQUEST:
            cls = UnprocessableEntityError if status == 422 else BadRequestError
        else:
            cls = _STATUS_CLASSES.get(kind, InternalServerError)
        error = status_error(cls, message, status, url=url, headers=failure.headers, body=body)
        if isinstance(error, RateLimitError):
            waits = [a.retry_after_s for a in attempts if a.retry_after_s is not None]
            error.retry_after = min(waits) if waits else failure.retry_after
    return _attach(error, attempts, route)  # type: ignore[no-any-return]


def stream_interrupted(
    failure: ProviderError, partial_text: str, usage: Usage | None, attempts: list[Attempt], route: RouteRecord
) -> StreamInterruptedError:
    """The error a committed stream raises when it breaks: names the break, keeps the partial answer."""
    message = f"stream interrupted after {len(partial_text)} characters of the answer: {failure.message}" + _tried(
        attempts
    )
    error = StreamInterruptedError(message, _request(None), body=failure.body)
    error.partial_text = partial_text
    error.usage = usage
    return _attach(error, attempts, route)  # type: ignore[no-any-return]


def unknown_model(model: str, aliases: list[str]) -> UnknownModelError:
    """Raised before any I/O when nothing serves `model`; lists what does."""
    message = f"model {model!r} is not configured; known models: {', '.join(sorted(aliases)) or 'none'}"
    error = status_error(UnknownModelError, message, 404, body={"message": message, "code": "model_not_found"})
    return _attach(error, [], None)  # type: ignore[no-any-return]


def cache_miss(model: str, route: RouteRecord) -> CacheMissError:
    """Raised for `only-if-cached` when the answer isn't cached."""
    message = f"{model!r}: the answer is not in the cache (route cache: only-if-cached)"
    error = status_error(CacheMissError, message, 504, body={"message": message})
    return _attach(error, [], route)  # type: ignore[no-any-return]


def no_candidates(model: str, excluded: list[Exclusion], route: RouteRecord) -> NoCandidatesError:
    """Raised when every deployment was excluded before ranking; says why each was."""
    reasons = "; ".join(f"{e.candidate}: {e.reason}" for e in excluded)
    message = f"no deployment of {model!r} can serve this request ({reasons})"
    error = status_error(NoCandidatesError, message, 400, body={"message": message})
    return _attach(error, [], route)  # type: ignore[no-any-return]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def wire_error(error: openai.APIError) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The HTTP status, headers and OpenAI-shaped JSON body that tell a client of `error` — what the
    routing transport (and the gateway) answer, so an openai client raises the same class again."""
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
    elif isinstance(error, openai.APITimeoutError):
        status = 504
    else:
        status = 502  # a connection lost or a stream broken upstream: a bad gateway, as a proxy says
    headers: dict[str, str] = {"x-should-retry": "false"}  # the router has retried already
    if isinstance(error, openai.APIStatusError):
        headers.update(
            {k: v for k, v in error.response.headers.items() if k.lower().startswith(("retry-after", "x-ratelimit"))}
        )
    wait = getattr(error, "retry_after", None)
    if isinstance(wait, (int, float)) and "retry-after" not in headers:
        headers["retry-after"] = str(max(1, round(wait)))
    body = error.body if isinstance(error.body, dict) else {}
    code = body.get("code")
    payload = {
        "message": error.message,
        "type": body.get("type") if isinstance(body.get("type"), str) else _ERROR_TYPES.get(status, "api_error"),
        "param": body.get("param"),
        "code": code if isinstance(code, (str, int)) else None,
    }
    return status, headers, {"error": payload}


def bad_request(message: str, *, param: str | None = None) -> BadRequestError:
    """A request the router refuses before routing it (malformed body, unknown hint): HTTP 400."""
    body = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    error = status_error(BadRequestError, message, 400, body=body)
    return _attach(error, [], None)  # type: ignore[no-any-return]


def not_routed(method: str, path: str) -> NotFoundError:
    """A request for an API the router does not route (files, images, audio, …): HTTP 404, naming what it does."""
    message = (
        f"inference-router does not route {method} /v1/{path}; it routes chat.completions, completions,"
        " embeddings, responses and models"
    )
    body = {"message": message, "type": "not_found_error", "param": None, "code": "not_routed"}
    error = status_error(NotFoundError, message, 404, body=body)
    return _attach(error, [], None)  # type: ignore[no-any-return]
