"""Logging: the `router` logger, and secrets redacted from everything it emits."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from router import AsyncRouter, AuthenticationError
from router.observe.logs import redact, register_secret

pytestmark = pytest.mark.anyio
KEY = "sk-test-logging-2b7e41d9c0"
URL = "http://echo.test/v1/chat/completions"
CONFIG = {
    "backends": {"echo": {"provider": "openai", "base_url": "http://echo.test/v1", "api_key": KEY}},
    "models": {"m": {"deployments": [{"backend": "echo", "model": "m"}]}},
    "retry": {"attempts_per_deployment": 1},
}


async def test_a_provider_echoing_the_key_never_puts_it_in_a_log_or_an_exception(
    httpx2_mock: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    message = f"Incorrect API key provided: {KEY}. You can find your API key at https://platform.example"
    httpx2_mock.post(URL).mock(return_value=httpx.Response(401, json={"error": {"message": message}}))
    caplog.set_level(logging.DEBUG)
    async with AsyncRouter.from_config(CONFIG) as router:
        with pytest.raises(AuthenticationError) as caught:
            await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert KEY not in str(caught.value) and KEY not in repr(caught.value.body)
    assert any("attempt failed" in r.getMessage() for r in caplog.records)  # the failure was logged…
    assert KEY not in caplog.text  # …without the key


def test_the_filter_redacts_registered_keys_tokens_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(KEY)
    logger = logging.getLogger("router")
    with caplog.at_level(logging.DEBUG, logger="router"):
        logger.warning("sending with %s", KEY)
        logger.warning("headers: Authorization: Bearer abcdef123456 and api_key=zyx987654321")
        try:
            raise RuntimeError(f"boom {KEY}")
        except RuntimeError:
            logger.exception("a hook raised")
    assert KEY not in caplog.text and "abcdef123456" not in caplog.text and "zyx987654321" not in caplog.text
    assert caplog.text.count("[redacted]") >= 4
    assert redact("nothing secret here") == "nothing secret here"


def test_short_values_are_not_registered() -> None:
    register_secret("k")  # a one-letter test key would turn every "k" in a log into [redacted]
    assert redact("keep kites") == "keep kites"


def test_the_suite_wide_log_grep_is_listening() -> None:
    """conftest's session fixture captures every record at DEBUG from the root logger."""
    capture = [h for h in logging.getLogger().handlers if type(h).__name__ == "_EveryLogLine"]
    assert capture and logging.getLogger("router").isEnabledFor(logging.DEBUG)
    logging.getLogger("router").debug("marker %s", "seen-by-the-suite-grep")
    assert any("seen-by-the-suite-grep" in line for line in capture[0].lines)  # type: ignore[attr-defined]
