"""The production transport under the adapters (`providers/http.py`): aiohttp behind httpx2's interface.

The fault-server and llama.cpp tests run on it; these pin what users configure through the
environment and how aiohttp's failures are named.
"""

from __future__ import annotations

import socket

import httpx2
import pytest

from providers.http import AiohttpTransport, backend_client

pytestmark = pytest.mark.anyio


def test_environment_proxies_apply_per_host_and_no_proxy_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "gpu-box.internal")
    transport = AiohttpTransport()
    assert transport._proxy_for(httpx2.URL("https://api.groq.com/openai/v1")) == "http://proxy.internal:3128"
    assert transport._proxy_for(httpx2.URL("https://gpu-box.internal/v1")) is None
    assert transport._proxy_for(httpx2.URL("http://api.groq.com/openai/v1")) is None  # no HTTP_PROXY set


async def test_a_refused_connection_is_a_connect_error_that_says_so() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with backend_client() as client:
        with pytest.raises(httpx2.ConnectError, match="connection refused"):
            await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=b"{}")
