"""The HTTP under the adapters: httpx2's transport interface over aiohttp's connection pool.

Adapters speak httpx2 (`build_request`, `send`, `aiter_bytes`): that is their one seam, and what
tests mock (respx, through pytest-httpx2). In production the bytes move through aiohttp, whose
pool and HTTP/1.1 parser cost a fraction of httpcore2's per request and per chunk (README
"Benchmarks"). aiohttp's failures are named as httpx2's (connect vs read timeouts, refused
connections, cut bodies), so the failure taxonomy above does not change with the transport.

What users configure carries over: per-request connect timeouts (the adapters' `Deadlines`),
proxies from the environment (`HTTP(S)_PROXY`, `NO_PROXY`), TLS verification against the system
store or `SSL_CERT_FILE`, and a custom `ssl.SSLContext` (`backend_transport(verify=...)`).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
from multidict import CIMultiDict

_LATIN_1 = "iso-8859-1"
"""What HTTP header bytes decode as, exactly and always (httpx2 otherwise tries ascii, then utf-8, per object)."""
_READ_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)
"""A body cut short: what httpcore2 calls a RemoteProtocolError."""


def _mapped(exc: BaseException, *, reading: bool) -> httpx2.TransportError | None:
    """aiohttp's exception as the httpx2 one adapters understand (None: not a transport failure)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError) or (isinstance(exc, asyncio.TimeoutError) and not reading):
        return httpx2.ConnectTimeout(str(exc) or "connect timed out")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx2.ReadTimeout(str(exc) or "read timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        return httpx2.ConnectError(f"{'connection refused: ' if refused else ''}{exc}")
    if isinstance(exc, _READ_ERRORS):
        return httpx2.RemoteProtocolError(f"peer closed connection without sending complete message body ({exc})")
    if isinstance(exc, aiohttp.ClientError):
        return httpx2.ReadError(str(exc) or type(exc).__name__)
    return None


class _Body(httpx2.AsyncByteStream):
    """An aiohttp response body as httpx2 reads it; closing it early drops the connection."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        failure: httpx2.TransportError | None = None
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = _mapped(exc, reading=True)
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # read to its end: the connection goes back to the pool
        else:
            response.close()  # cut short (cancelled, or a stream abandoned): the connection goes


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that sends through one aiohttp session (made on first use, in its loop)."""

    def __init__(
        self, *, max_connections: int = 1000, keepalive_s: float = 15.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._ssl: ssl.SSLContext | bool = verify
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _proxy_for(self, url: httpx2.URL) -> str | None:
        """The environment's proxy for this scheme and host (`HTTP(S)_PROXY`, `NO_PROXY`), looked up
        once per host: aiohttp's own `trust_env` would look in a worker thread on every request."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            proxy = urllib.request.getproxies().get(url.scheme)
            self._proxies[key] = None if proxy is None or urllib.request.proxy_bypass(url.host) else proxy
        return self._proxies[key]

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_s, ssl=self._ssl
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )
        return session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout") or {}
        # Two turns of the loop first (one to read a waiting FIN, one to run its callback): a pooled
        # connection whose server has gone is then seen closed and not reused, as httpcore2 checks
        # a socket's readability before reusing it. Without this a crashed backend costs each
        # caller one extra failed attempt on a dead connection before the refused connect.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        request.headers.encoding = _LATIN_1  # header bytes as they are, without httpx2 guessing the encoding
        failure: httpx2.TransportError | None = None
        try:
            response = await self._open().request(
                request.method,
                str(request.url),
                headers=CIMultiDict(request.headers.multi_items()),
                data=request.content or None,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = _mapped(exc, reading=False)
            if failure is None:
                raise
        if failure is not None:  # raised outside the except: aiohttp's error holds the request
            raise failure
        answer = httpx2.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )
        answer.headers.encoding = _LATIN_1
        return answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def backend_client(*, verify: ssl.SSLContext | bool = True) -> httpx2.AsyncClient:
    """The pooled client the router reaches backends with: httpx2's interface, aiohttp's transport."""
    return httpx2.AsyncClient(
        transport=AiohttpTransport(verify=verify), timeout=httpx2.Timeout(None, connect=5.0), trust_env=False
    )
