"""README "openai's exceptions": each final failure raises the router's own class for it (a subclass
of the matching openai class), carrying every attempt — quota and balance failures included."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
import respx

import router
from providers import errors as failures
from router import AsyncRouter
from router.config.eligibility import Exclusion
from router.errors import cache_miss, no_candidates, stream_interrupted, to_caller_error, unknown_model
from router.path.record import Attempt, RouteRecord

pytestmark = pytest.mark.anyio
URL = "http://x.test/v1"
HI = [{"role": "user", "content": "hi"}]


def one_backend(provider: str) -> dict[str, Any]:
    return {
        "backends": {
            "x": {"provider": provider, "base_url": URL, "api_key": "sk-test-errors-7f3a"},
            "y": {"provider": provider, "base_url": "http://y.test/v1", "api_key": "sk-test-errors-8b4c"},
        },
        "models": {"m": {"deployments": [{"backend": "x", "model": "m"}, {"backend": "y", "model": "m"}]}},
        "retry": {"attempts_per_deployment": 3, "backoff_initial_s": 0.0, "backoff_max_s": 0.0},
        "telemetry": {"otel": "off"},
    }


CASES = [
    # provider, status, error body, router class, openai base, status the caller sees
    ("deepseek", 402, {"error": {"message": "Insufficient Balance"}}, "QuotaExceededError", openai.APIStatusError, 402),
    ("deepseek", 400, {"error": {"message": "Insufficient balance"}}, "QuotaExceededError", openai.APIStatusError, 400),
    ("cerebras", 402, {"error": {"message": "Payment required"}}, "QuotaExceededError", openai.APIStatusError, 402),
    (
        "groq",
        413,
        {"error": {"message": "Request too large for TPM"}},
        "QuotaExceededError",
        openai.APIStatusError,
        413,
    ),
    ("openai", 404, {"error": {"message": "no such model"}}, "NotFoundError", openai.NotFoundError, 404),
    ("openai", 403, {"error": {"message": "not allowed"}}, "PermissionDeniedError", openai.PermissionDeniedError, 403),
    ("openai", 401, {"error": {"message": "bad key"}}, "AuthenticationError", openai.AuthenticationError, 401),
    ("openai", 422, {"error": {"message": "cannot"}}, "UnprocessableEntityError", openai.UnprocessableEntityError, 422),
    ("openai", 400, {"error": {"message": "bad field"}}, "BadRequestError", openai.BadRequestError, 400),
]


@pytest.mark.parametrize(("provider", "status", "body", "name", "base", "seen"), CASES)
async def test_each_failure_raises_the_routers_own_class_without_retrying_the_deployment(
    httpx2_mock: respx.Router, provider: str, status: int, body: Any, name: str, base: type[Exception], seen: int
) -> None:
    """Quota, auth, not-found, 422 and bad-request failures: one try per deployment, then the router's class."""
    x = httpx2_mock.post(f"{URL}/chat/completions").mock(return_value=httpx.Response(status, json=body))
    y = httpx2_mock.post("http://y.test/v1/chat/completions").mock(return_value=httpx.Response(status, json=body))
    cls = getattr(router, name)
    async with AsyncRouter.from_config(one_backend(provider)) as client:
        with pytest.raises(base) as caught:
            await client.chat.completions.create(model="m", messages=HI)
    error = caught.value
    assert type(error) is cls, f"{type(error).__name__} instead of router.{name}"
    assert isinstance(error, openai.APIStatusError) and error.status_code == seen
    assert (x.call_count, y.call_count) == (1, 1), "a non-retryable failure was retried on the same deployment"
    assert [(a.backend, a.outcome) for a in error.attempts] == [("x", a_outcome(name)), ("y", a_outcome(name))]


def a_outcome(name: str) -> str:
    return {
        "QuotaExceededError": "quota",
        "NotFoundError": "not_found",
        "PermissionDeniedError": "auth",
        "AuthenticationError": "auth",
        "UnprocessableEntityError": "bad_request",
        "BadRequestError": "bad_request",
    }[name]


# --- what the caller can read off the exception (README "Errors") --------------------------------


def attempt(backend: str, outcome: str = "server_error", retry_after_s: float | None = None) -> Attempt:
    return Attempt(backend, "openai", "m", outcome, 0.1, retry_after_s=retry_after_s)


def record() -> RouteRecord:
    return RouteRecord(requested_model="m", alias="m", policy="ordered", stream=False)


def test_a_status_error_carries_the_providers_error_body_status_url_and_attempts() -> None:
    """`.body` is the provider's `error` object, `.status_code` its status, `.request.url` the backend's."""
    url = "http://x.test/v1/chat/completions"
    failure = failures.BadRequest(
        "x: bad field", status_code=422, body={"error": {"message": "bad field", "param": "n"}}
    )
    tried = [attempt("x", "bad_request")]
    error = to_caller_error(failure, tried, None, url=url)
    assert type(error) is router.UnprocessableEntityError
    assert error.body == {"message": "bad field", "param": "n"} and error.status_code == 422  # type: ignore[attr-defined]
    assert str(error.request.url) == url and error.attempts == tried  # type: ignore[attr-defined]
    assert str(error) == "x: bad field (after 1 attempt: x/m: bad_request)"
    route = record()
    other = to_caller_error(failures.ServerError("x: 500", body={"detail": "boom"}), tried, route)
    assert other.body == {"detail": "boom"} and other.route is route  # type: ignore[attr-defined]
    plain = to_caller_error(failures.BadRequest("x: no", body="not json"), [], None)
    assert type(plain) is router.BadRequestError and plain.body == "not json" and plain.status_code == 400  # type: ignore[attr-defined]
    assert str(plain.request.url) == "http://inference-router.invalid/chat/completions"


@pytest.mark.parametrize(
    ("failure", "cls", "status"),
    [
        (failures.QuotaExceeded("q"), "QuotaExceededError", 402),
        (failures.AuthFailed("a"), "AuthenticationError", 401),
        (failures.ModelNotFound("n"), "NotFoundError", 404),
        (failures.Unsupported("u"), "BadRequestError", 400),
        (failures.ContextTooLong("c"), "ContextLengthExceededError", 400),
        (failures.ContentFiltered("f"), "ContentFilteredError", 400),
        (failures.Overloaded("o"), "OverloadedError", 503),
        (failures.ServerError("s"), "InternalServerError", 500),
        (failures.RateLimited("r"), "RateLimitError", 429),
    ],
)
def test_without_a_status_each_kind_gets_its_usual_one(failure: Exception, cls: str, status: int) -> None:
    """A failure with no HTTP status (e.g. an in-band error) still raises its class with the usual status."""
    error = to_caller_error(failure, [], None)  # type: ignore[arg-type]
    assert type(error) is getattr(router, cls) and error.status_code == status  # type: ignore[attr-defined]


def test_transport_failures_keep_the_message_and_the_url() -> None:
    """Timeouts, connection failures and broken streams: openai's classes, the message and the backend URL."""
    url = "http://x.test/v1/chat/completions"
    timeout = to_caller_error(
        failures.ProviderTimeout("x: no first token in 2s"), [attempt("x", "timeout")], None, url=url
    )
    assert type(timeout) is router.APITimeoutError and str(timeout.request.url) == url
    assert timeout.message == str(timeout) == "x: no first token in 2s (after 1 attempt: x/m: timeout)"
    refused = to_caller_error(failures.ConnectionFailed("x: refused"), [], None, url=url)
    assert (
        type(refused) is router.APIConnectionError
        and str(refused.request.url) == url
        and refused.message == "x: refused"
    )
    broken = to_caller_error(failures.StreamBroken("x: cut", body={"error": {"message": "cut"}}), [], None, url=url)
    assert type(broken) is router.StreamInterruptedError and str(broken.request.url) == url
    assert broken.body == {"message": "cut"}


def test_a_rate_limit_error_says_the_shortest_wait_seen() -> None:
    """`RateLimitError.retry_after`: the shortest wait any attempt was given, else the last failure's."""
    tried = [attempt("x", "rate_limited", 9.0), attempt("y", "rate_limited"), attempt("z", "rate_limited", 2.5)]
    error = to_caller_error(failures.RateLimited("z: slow", retry_after=7.0), tried, None)
    assert error.retry_after == 2.5  # type: ignore[attr-defined]
    alone = to_caller_error(failures.RateLimited("z: slow", retry_after=7.0), [attempt("y", "rate_limited")], None)
    assert alone.retry_after == 7.0  # type: ignore[attr-defined]


def test_the_message_lists_the_last_six_attempts_and_counts_the_rest() -> None:
    """Long failures stay readable: the last six attempts by name, the earlier ones counted."""
    tried = [attempt(f"b{i}") for i in range(8)]
    message = str(to_caller_error(failures.ServerError("b7: down"), tried, None))
    assert message == (
        "b7: down (after 8 attempts: 2 earlier, b2/m: server_error; b3/m: server_error; b4/m: server_error; "
        "b5/m: server_error; b6/m: server_error; b7/m: server_error)"
    )
    six = str(to_caller_error(failures.ServerError("b5: down"), tried[:6], None))
    assert "earlier" not in six and six.count("server_error") == 6 and "after 6 attempts:" in six
    seven = str(to_caller_error(failures.ServerError("b6: down"), tried[:7], None))
    assert "after 7 attempts: 1 earlier, b1/m" in seven
    assert str(to_caller_error(failures.ServerError("down"), [], None)) == "down"


def test_errors_raised_before_any_attempt_name_what_to_do() -> None:
    """Unknown model (404, lists the aliases), cache miss (504), no candidates (400, every reason)."""
    route = record()
    unknown = unknown_model("gpt-9", ["b", "a"])
    assert unknown.status_code == 404 and unknown.attempts == [] and unknown.route is None
    assert str(unknown) == "model 'gpt-9' is not configured; known models: a, b"
    assert unknown.body == {"message": str(unknown), "code": "model_not_found"}
    assert str(unknown_model("x", [])).endswith("known models: none")
    miss = cache_miss("m", route)
    assert type(miss) is router.CacheMissError and miss.status_code == 504 and miss.route is route
    assert str(miss) == "'m': the answer is not in the cache (route cache: only-if-cached)"
    assert miss.body == {"message": "'m': the answer is not in the cache (route cache: only-if-cached)"}
    none = no_candidates("m", [Exclusion("a/m", "excluded by hint"), Exclusion("b/m", "no tools")], route)
    assert none.status_code == 400 and none.route is route and none.attempts == []
    assert str(none) == "no deployment of 'm' can serve this request (a/m: excluded by hint; b/m: no tools)"
    assert none.body == {"message": str(none)}


def test_stream_interrupted_keeps_the_partial_answer_the_body_and_the_attempts() -> None:
    """After the commit point: `.partial_text`, `.usage`, the provider's body, every attempt."""
    from providers import Usage

    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    tried = [attempt("x", "stream_broken")]
    error = stream_interrupted(failures.StreamBroken("x: cut", body={"code": 1}), "Hello", usage, tried, record())
    route = record()
    error = stream_interrupted(failures.StreamBroken("x: cut", body={"code": 1}), "Hello", usage, tried, route)
    assert (error.partial_text, error.usage, error.attempts, error.body) == ("Hello", usage, tried, {"code": 1})
    assert error.route is route
    assert (
        str(error)
        == "stream interrupted after 5 characters of the answer: x: cut (after 1 attempt: x/m: stream_broken)"
    )


def test_every_exception_in_the_readmes_table_is_importable_from_router() -> None:
    """README "Errors": each class named `router.…` is there, a subclass of its openai base."""
    import openai as oa

    table = {
        "RateLimitError": oa.RateLimitError,
        "OverloadedError": oa.InternalServerError,
        "InternalServerError": oa.InternalServerError,
        "APITimeoutError": oa.APITimeoutError,
        "APIConnectionError": oa.APIConnectionError,
        "ContextLengthExceededError": oa.BadRequestError,
        "ContentFilteredError": oa.BadRequestError,
        "BadRequestError": oa.BadRequestError,
        "UnprocessableEntityError": oa.UnprocessableEntityError,
        "AuthenticationError": oa.AuthenticationError,
        "PermissionDeniedError": oa.PermissionDeniedError,
        "QuotaExceededError": oa.APIStatusError,
        "NotFoundError": oa.NotFoundError,
        "UnknownModelError": oa.NotFoundError,
        "NoCandidatesError": oa.BadRequestError,
        "CacheMissError": oa.APIStatusError,
        "StreamInterruptedError": oa.APIError,
    }
    for name, base in table.items():
        assert issubclass(getattr(router, name), base), name
        assert name in router.__all__, name
