"""The HTTP under the adapters: aiohttp's connection pool, behind httpx2's interface and a leaner one.

Adapters send through `post` (their one seam): given the pooled `BackendClient` it goes straight to
aiohttp and answers a `WireResponse` (status, headers, body) with no httpx2 objects on the way — the
cost per call and per chunk is then aiohttp's (README "Benchmarks"); given any other httpx2 client
(a user's own, or the one tests mock with respx through pytest-httpx2) it is `build_request` + `send`,
whose `httpx2.Response` reads the same. Everything else (load polls, stored-answer fetches) uses the
client as an httpx2 client, over the same aiohttp pool. aiohttp's failures are named as httpx2's
(connect vs read timeouts, refused connections, cut bodies) on both paths, so the failure taxonomy
above does not change with the transport.

What users configure carries over: per-request connect timeouts (the adapters' `Deadlines`),
proxies from the environment (`HTTP(S)_PROXY`, `NO_PROXY`), TLS verification against the system
store or `SSL_CERT_FILE`, and a custom `ssl.SSLContext` (`backend_client(verify=...)`).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

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


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives; a cut or a read timeout raises as httpx2 names it."""
    content = response.content
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


def _let_go(response: aiohttp.ClientResponse) -> None:
    """Read to its end, the connection goes back to the pool; cut short (cancelled, or a stream
    abandoned), the connection is dropped."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


class _Body(httpx2.AsyncByteStream):
    """An aiohttp response body as httpx2 reads it; closing it early drops the connection."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _chunks(self._response)

    async def aclose(self) -> None:
        _let_go(self._response)


class WireResponse(Protocol):
    """What adapters read of an answer: `httpx2.Response` has it, and so does `AiohttpResponse`."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    async def aread(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class AiohttpResponse:
    """An aiohttp response as adapters read it (`WireResponse`), without building httpx2's objects."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        parts = [chunk async for chunk in _chunks(self._response)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return _chunks(self._response)

    async def aclose(self) -> None:
        _let_go(self._response)


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
        self._proxies_by_url: dict[str, str | None] = {}
        """The same, by the adapters' full URLs (their fast path has no parsed URL)."""

    def _proxy_for(self, url: httpx2.URL) -> str | None:
        """The environment's proxy for this scheme and host (`HTTP(S)_PROXY`, `NO_PROXY`), looked up
        once per host: aiohttp's own `trust_env` would look in a worker thread on every request."""
        return self._proxy_for_host(url.scheme, url.host)

    def _proxy_for_host(self, scheme: str, host: str) -> str | None:
        key = (scheme, host)
        if key not in self._proxies:
            proxy = urllib.request.getproxies().get(scheme)
            self._proxies[key] = None if proxy is None or urllib.request.proxy_bypass(host) else proxy
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

    async def _open_response(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | CIMultiDict[str],
        data: bytes | None,
        params: list[tuple[str, str]] | None,
        proxy: str | None,
        connect_s: float | None,
        read_s: float | None,
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for its response headers; failures raise as httpx2 names them."""
        # Two turns of the loop first (one to read a waiting FIN, one to run its callback): a pooled
        # connection whose server has gone is then seen closed and not reused, as httpcore2 checks
        # a socket's readability before reusing it. Without this a crashed backend costs each
        # caller one extra failed attempt on a dead connection before the refused connect.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        failure: httpx2.TransportError | None = None
        try:
            return await self._open().request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                allow_redirects=False,
                proxy=proxy,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = _mapped(exc, reading=False)
            if failure is None:
                raise
        raise failure  # outside the except: aiohttp's error holds the request

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        connect_s: float | None = None,
    ) -> AiohttpResponse:
        """POST without httpx2 on the way: the adapters' fast path (`post` below)."""
        try:
            proxy = self._proxies_by_url[url]
        except KeyError:
            parts = urlsplit(url)
            proxy = self._proxies_by_url[url] = self._proxy_for_host(parts.scheme, parts.hostname or "")
        response = await self._open_response(
            "POST",
            url,
            headers=headers,
            data=content,
            params=_query(params) if params else None,
            proxy=proxy,
            connect_s=connect_s,
            read_s=None,
        )
        return AiohttpResponse(response)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout") or {}
        request.headers.encoding = _LATIN_1  # header bytes as they are, without httpx2 guessing the encoding
        response = await self._open_response(
            request.method,
            str(request.url),
            headers=CIMultiDict(request.headers.multi_items()),
            data=request.content or None,
            params=None,
            proxy=self._proxy_for(request.url),
            connect_s=timeout.get("connect"),
            read_s=timeout.get("read"),
        )
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


def _query(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as httpx2 writes them (`True` → `true`, `None` → empty, a list → the key repeated),
    for aiohttp, which takes only strings and numbers."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            text = "true" if item is True else "false" if item is False else "" if item is None else str(item)
            pairs.append((str(key), text))
    return pairs


class BackendClient(httpx2.AsyncClient):
    """The pooled client the router reaches backends with: httpx2's interface over aiohttp, plus
    the adapters' fast path (`post`) straight to aiohttp."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True) -> None:
        self.wire = AiohttpTransport(verify=verify)
        super().__init__(transport=self.wire, timeout=httpx2.Timeout(None, connect=5.0), trust_env=False)


def backend_client(*, verify: ssl.SSLContext | bool = True) -> httpx2.AsyncClient:
    """The pooled client the router reaches backends with (`BackendClient`)."""
    return BackendClient(verify=verify)


async def post(
    client: httpx2.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    params: Mapping[str, Any] | None,
    connect_s: float,
) -> WireResponse:
    """POST and wait for the response headers; the body is the caller's to read (or close).

    On the pooled `BackendClient` this goes straight to aiohttp; on any other httpx2 client (a
    user's own, respx's in tests) it is `build_request` + `send(stream=True)`."""
    if type(client) is BackendClient:
        return await client.wire.post(url, content=content, headers=headers, params=params, connect_s=connect_s)
    request = client.build_request(
        "POST", url, content=content, headers=headers, params=params, timeout=httpx2.Timeout(None, connect=connect_s)
    )
    return await client.send(request, stream=True)
