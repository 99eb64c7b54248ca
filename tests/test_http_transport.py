"""The production transport under the adapters (`providers/http.py`): aiohttp behind httpx2's interface.

The fault-server and llama.cpp tests run on it; these pin what users configure through the
environment and how aiohttp's failures are named.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx2
import pytest

from providers.http import AiohttpTransport, backend_client, post

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


async def test_the_fast_path_names_a_refused_connection_as_httpx2_does() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with backend_client() as client:
        with pytest.raises(httpx2.ConnectError, match="connection refused"):
            await post(client, f"http://127.0.0.1:{port}/v1/x", content=b"{}", headers={}, params=None, connect_s=1.0)


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


async def _raw_server(answer: bytes, seen: list[bytes] | None = None) -> tuple[asyncio.Server, int]:
    """A server that reads one request (its request line into `seen`) and writes `answer` as it is, then hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head.split(b"\r\n", 1)[0])
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "httpx2 interface"])
async def test_both_paths_read_status_headers_and_body_and_name_a_cut_body(fast: bool) -> None:
    """The adapters' fast path and the httpx2 interface over the same pool answer alike: status,
    case-insensitive headers, the body; a body shorter than its Content-Length is a
    RemoteProtocolError (a cut answer, retried as a lost connection), never a short success."""

    async def send(client: httpx2.AsyncClient, port: int) -> Any:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        if fast:
            return await post(
                client, url, content=b"{}", headers={"Authorization": "Bearer k"}, params=None, connect_s=1.0
            )
        return await client.send(client.build_request("POST", url, content=b"{}"), stream=True)

    whole, whole_port = await _raw_server(
        b'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )
    cut, cut_port = await _raw_server(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
    async with whole, cut, backend_client() as client:
        response = await send(client, whole_port)
        assert response.status_code == 429
        assert response.headers.get("retry-after") == "3" and response.headers.get("RETRY-AFTER") == "3"
        assert await response.aread() == b'{"a":1}'
        await response.aclose()
        response = await send(client, cut_port)
        with pytest.raises(httpx2.RemoteProtocolError):
            await response.aread()
        await response.aclose()


async def test_the_fast_path_goes_through_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """`HTTP_PROXY` applies to the adapters' requests too: they reach the proxy, asking for the backend's URL."""
    seen: list[bytes] = []
    server, port = await _raw_server(OK_EMPTY, seen)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with server, backend_client() as client:
        response = await post(
            client, "http://127.0.0.2:9/v1/chat/completions", content=b"{}", headers={}, params=None, connect_s=1.0
        )
        assert response.status_code == 200 and await response.aread() == b"{}"
        await response.aclose()
    assert seen == [b"POST http://127.0.0.2:9/v1/chat/completions HTTP/1.1"]


async def test_the_fast_path_writes_query_parameters_as_httpx2_does() -> None:
    """`extra_query` values that aiohttp alone would refuse (booleans, None, lists) are written as httpx2 writes them."""
    seen: list[bytes] = []
    server, port = await _raw_server(OK_EMPTY, seen)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    params = {"beta": True, "off": False, "empty": None, "n": 2, "tag": ["a", "b"]}
    async with server, backend_client() as client:
        response = await post(client, url, content=b"{}", headers={}, params=params, connect_s=1.0)
        await response.aclose()
    assert seen == [b"POST /v1/chat/completions?beta=true&off=false&empty=&n=2&tag=a&tag=b HTTP/1.1"]
