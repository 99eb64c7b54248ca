"""README "openai's exceptions": each final failure raises the router's own class for it (a subclass
of the matching openai class), carrying every attempt — quota and balance failures included."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
import respx

import router
from router import AsyncRouter

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
    ("groq", 413, {"error": {"message": "Request too large for TPM"}}, "QuotaExceededError", openai.APIStatusError, 413),
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
