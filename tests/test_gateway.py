"""`inference-router serve` as a real process: the official openai SDK (sync and async) and raw HTTP
against it, with scripted loopback backends (the fault server) behind it.

What a user of the gateway relies on: the same answers, types and exception classes as from a
provider; the route record in headers and on a stream's last chunk; a stream that breaks after
tokens ends with an error event and no `[DONE]`; keys, limits and budgets (across two processes
through a real redis-server); SIGTERM finishing 50 streams in flight; a client that leaves freeing
its backend at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx2
import openai
import pytest

from tests.fault_server import FaultServer, context_400, cut_after, ok, silent, status
from tests.gateway_process import ROOT, GatewayProcess, free_port
from tests.redis_server import RedisServer, redis_fixture

TEXT = "The quick brown fox jumps over the lazy dog."
TEAM = "sk-team-a-0123456789abcdef"
SMALL = "sk-small-0123456789abcdef"
THRIFTY = "sk-thrifty-0123456789abcdef"
WORDY = "sk-wordy-0123456789abcdef"
ADMIN = "sk-admin-0123456789abcdef"
ENV = {"TEAM_KEY": TEAM, "SMALL_KEY": SMALL, "THRIFTY_KEY": THRIFTY, "WORDY_KEY": WORDY, "ADMIN_KEY": ADMIN}

redis_server = redis_fixture(scope="module")


def _config(fault: FaultServer, extra: str = "") -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    return f"""
backends:
  good: {{provider: openai, base_url: "{fault.base_url("good")}", api_key: sk-backend-good-key}}
  broken: {{provider: openai, base_url: "{fault.base_url("broken")}", api_key: sk-backend-broken-key}}
  limited: {{provider: openai, base_url: "{fault.base_url("limited")}", api_key: sk-backend-limited-key}}
  cut: {{provider: openai, base_url: "{fault.base_url("cut")}", api_key: sk-backend-cut-key}}
  ctx: {{provider: openai, base_url: "{fault.base_url("ctx")}", api_key: sk-backend-ctx-key}}
  hang: {{provider: openai, base_url: "{fault.base_url("hang")}", api_key: sk-backend-hang-key}}
  dead: {{provider: openai, base_url: "{dead}", api_key: sk-backend-dead-key}}
models:
  chat: {{deployments: [{{backend: good, model: m, price: {{input_per_mtok: 1000, output_per_mtok: 1000}}}}]}}
  secret-project: {{deployments: [{{backend: good, model: m}}]}}
  broken: {{deployments: [{{backend: broken, model: m}}]}}
  limited: {{deployments: [{{backend: limited, model: m}}]}}
  cut: {{deployments: [{{backend: cut, model: m}}]}}
  ctx: {{deployments: [{{backend: ctx, model: m}}]}}
  hang: {{deployments: [{{backend: hang, model: m}}]}}
  dead: {{deployments: [{{backend: dead, model: m}}]}}
retry: {{attempts_per_deployment: 1, backoff_initial_s: 0}}
circuit: {{failures: 1000, min_requests: 1000}}
gateway:
  max_body_bytes: 4096
  admin_key: ${{ADMIN_KEY}}
  keys:
    team-a: {{secret: "${{TEAM_KEY}}", models: [chat, broken, limited, cut, ctx, hang, dead], tags: [team-a]}}
    small: {{secret: "${{SMALL_KEY}}", models: [chat], rpm: 2}}
    thrifty: {{secret: "${{THRIFTY_KEY}}", models: [chat], daily_usd: 0.001}}
    wordy: {{secret: "${{WORDY_KEY}}", models: [chat], tpm: 15}}
{extra}"""


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultServer]:
    with FaultServer(
        max_hold_s=10.0,
        good=ok(TEXT, usage=(10, 9)),
        broken=status(500),
        limited=status(429, retry_after=7),
        cut=cut_after(3, TEXT),
        ctx=context_400(),
        hang=silent(),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(fault: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "gateway.yaml"
    config.write_text(_config(fault, f"usage: {{path: {folder / 'usage.sqlite'}, flush_s: 0.2}}\n"))
    with GatewayProcess(config, env=ENV) as process:
        yield process


def _client(gateway: GatewayProcess, key: str = TEAM) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def _aclient(gateway: GatewayProcess, key: str = TEAM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


HI = [{"role": "user", "content": "Hi"}]


# --- OpenAI's wire ----------------------------------------------------------------------------


def test_sync_sdk_gets_the_answer_and_the_route_headers(gateway: GatewayProcess) -> None:
    client = _client(gateway)
    reply = client.chat.completions.create(model="chat", messages=HI)
    assert reply.choices[0].message.content == TEXT
    assert reply.usage is not None and reply.usage.completion_tokens == 9
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-inference-router-backend"] == "good"
    assert raw.headers["x-inference-router-alias"] == "chat"
    assert float(raw.headers["x-inference-router-cost-usd"]) == pytest.approx(0.019)


@pytest.mark.anyio
async def test_async_sdk_streams_with_usage_and_the_route_record_on_the_last_chunk(gateway: GatewayProcess) -> None:
    async with _aclient(gateway) as client:
        stream = await client.chat.completions.create(
            model="chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
        record = (chunks[-1].model_extra or {})["inference_router"]
        assert record["backend"] == "good" and record["complete"] is True and record["cost_usd"] > 0
        assert all("inference_router" not in (c.model_extra or {}) for c in chunks[:-1])

        plain = await client.chat.completions.create(model="chat", messages=HI, stream=True)
        chunks = [chunk async for chunk in plain]
        assert all(c.usage is None for c in chunks), "usage only when stream_options.include_usage asks"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert (chunks[-1].model_extra or {})["inference_router"]["alias"] == "chat"


def test_hints_and_tags_go_through_extra_body(gateway: GatewayProcess) -> None:
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model="chat", messages=HI, extra_body={"route": {"policy": "cheapest", "tags": ["batch"]}}
    )
    assert raw.status_code == 200
    bad = httpx2.post(
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {TEAM}"},
        json={"model": "chat", "messages": HI, "route": {"policy": "nope"}},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "route"


def test_models_list_shows_only_what_the_key_may_use(gateway: GatewayProcess) -> None:
    ids = {model.id for model in _client(gateway).models.list()}
    assert {"chat", "cut", "dead"} <= ids and "secret-project" not in ids
    assert [model.id for model in _client(gateway, SMALL).models.list()] == ["chat"]
    with pytest.raises(openai.NotFoundError) as caught:
        _client(gateway, SMALL).models.retrieve("secret-project")
    assert "cut" not in caught.value.message, "another key's aliases are never named"


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("broken", openai.InternalServerError, 500),
        ("limited", openai.RateLimitError, 429),
        ("ctx", openai.BadRequestError, 400),
        ("dead", openai.InternalServerError, 502),
    ],
)
def test_every_error_class_reaches_the_client_with_its_status(
    gateway: GatewayProcess, model: str, error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as caught:
        _client(gateway).chat.completions.create(model=model, messages=HI)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["message"]
    if model == "limited":
        assert caught.value.response.headers["retry-after"] == "7"


def test_a_deadline_passing_is_a_504(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        _client(gateway).chat.completions.create(model="hang", messages=HI, extra_body={"route": {"deadline_s": 0.3}})
    assert caught.value.status_code == 504


def test_a_stream_broken_after_tokens_ends_with_an_error_event_and_no_done(gateway: GatewayProcess) -> None:
    with httpx2.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {TEAM}"},
        json={"model": "cut", "messages": HI, "stream": True},
    ) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1]) and "interrupted" in json.loads(events[-1])["error"]["message"]
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e)["choices"]
    )
    assert text and TEXT.startswith(text) and text != TEXT

    stream = _client(gateway).chat.completions.create(model="cut", messages=HI, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(seen) and TEXT.startswith("".join(seen))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"messages": []}', 400, "model"),
        (b'{"model": "chat"}', 400, "messages"),
        (b"not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "chat", "messages": [], "route": {"colour": "red"}}', 400, "route"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413, None),
    ],
)
def test_malformed_and_oversized_bodies(gateway: GatewayProcess, body: bytes, status: int, param: str | None) -> None:
    response = httpx2.post(
        gateway.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {TEAM}", "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_unknown_paths_are_404_in_openai_shape(gateway: GatewayProcess) -> None:
    response = httpx2.post(gateway.base_url + "/images/generations", headers={"authorization": f"Bearer {TEAM}"})
    assert response.status_code == 404 and "does not route" in response.json()["error"]["message"]
    assert httpx2.get(gateway.url + "/nope").status_code == 404


class _OtherEndpoints(http.server.BaseHTTPRequestHandler):
    """A loopback backend for legacy completions (JSON and SSE), embeddings and the Responses API."""

    protocol_version = "HTTP/1.1"
    USAGE: ClassVar[dict[str, int]] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path.endswith("/embeddings"):
            self._json(
                {
                    "object": "list",
                    "model": "m",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                }
            )
        elif self.path.endswith("/completions") and body.get("stream"):
            events = [
                {
                    "id": "c1",
                    "object": "text_completion",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "text": t, "finish_reason": f, "logprobs": None}],
                }
                for t, f in (("Hello", None), (" there", "stop"))
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(
                    {
                        "id": "c1",
                        "object": "text_completion",
                        "created": 1,
                        "model": "m",
                        "choices": [],
                        "usage": self.USAGE,
                    }
                )
            data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            self._send(data, "text/event-stream")
        elif self.path.endswith("/completions"):
            self._json(
                {
                    "id": "c1",
                    "object": "text_completion",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "text": "Hello there", "finish_reason": "stop", "logprobs": None}],
                    "usage": self.USAGE,
                }
            )
        elif self.path.endswith("/responses"):
            message = {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello there", "annotations": []}],
            }
            self._json(
                {
                    "id": "resp_1",
                    "object": "response",
                    "created_at": 1,
                    "status": "completed",
                    "model": "m",
                    "output": [message],
                    "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
                }
            )
        else:
            self._send(b'{"error": {"message": "no"}}', "application/json", 404)

    def _json(self, payload: object) -> None:
        self._send(json.dumps(payload).encode(), "application/json")

    def _send(self, data: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_completions_embeddings_and_responses_through_the_gateway(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherEndpoints)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "others.yaml"
    config.write_text(
        f"backends:\n  other: {{provider: openai, base_url: 'http://127.0.0.1:{server.server_address[1]}/v1', api_key: sk-other-backend}}\n"
        "models:\n  m: {deployments: [{backend: other, model: m}]}\n"
    )
    try:
        with GatewayProcess(config) as gateway:
            client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
            assert client.completions.create(model="m", prompt="Hi").choices[0].text == "Hello there"
            chunks = list(
                client.completions.create(model="m", prompt="Hi", stream=True, stream_options={"include_usage": True})
            )
            assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there"
            assert (
                chunks[-1].usage is not None
                and (chunks[-1].model_extra or {})["inference_router"]["backend"] == "other"
            )
            vectors = client.embeddings.with_raw_response.create(model="m", input="Hi")
            assert vectors.parse().data[0].embedding == [0.5, 0.25]
            assert vectors.headers["x-inference-router-endpoint"] == "embeddings"
            assert client.responses.create(model="m", input="Hi").output_text == "Hello there"
    finally:
        server.shutdown()


# --- keys, limits, budgets ----------------------------------------------------------------------


def test_bad_keys(gateway: GatewayProcess) -> None:
    for key in ("", "sk-wrong-0123456789abcdef", TEAM[:-1]):
        with pytest.raises(openai.AuthenticationError):
            _client(gateway, key or "x").chat.completions.create(model="chat", messages=HI)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _client(gateway, SMALL).chat.completions.create(model="secret-project", messages=HI)
    assert caught.value.status_code == 403
    assert "cut" not in caught.value.message and "team-a" not in caught.value.message


def test_a_keys_rate_limit_is_a_429_with_retry_after(gateway: GatewayProcess) -> None:
    client = _client(gateway, SMALL)
    client.chat.completions.create(model="chat", messages=HI)
    client.chat.completions.create(model="chat", messages=HI)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="chat", messages=HI)
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert "2 requests per minute" in caught.value.message


def test_a_keys_token_limit_counts_what_its_calls_used(gateway: GatewayProcess) -> None:
    client = _client(gateway, WORDY)
    client.chat.completions.create(model="chat", messages=HI)  # 10 + 9 tokens: over 15 once done
    with pytest.raises(openai.RateLimitError, match="15 tokens per minute"):
        client.chat.completions.create(model="chat", messages=HI)


def test_a_spent_budget_is_a_429_that_names_it(gateway: GatewayProcess) -> None:
    client = _client(gateway, THRIFTY)
    client.chat.completions.create(model="chat", messages=HI)  # costs $0.019, over the $0.001 budget
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="chat", messages=HI)
    assert "daily budget" in caught.value.message
    assert caught.value.code == "daily_budget_exceeded"


def test_usage_by_key_from_the_cli_and_the_admin_endpoint(gateway: GatewayProcess) -> None:
    _client(gateway).chat.completions.create(model="chat", messages=HI)
    assert httpx2.get(gateway.url + "/admin/usage").status_code == 403
    assert httpx2.get(gateway.url + "/admin/usage", headers={"authorization": f"Bearer {TEAM}"}).status_code == 403
    admin = {"authorization": f"Bearer {ADMIN}"}
    rows = httpx2.get(gateway.url + "/admin/usage?by=key", headers=admin).json()["rows"]
    assert any(row["key"] == "team-a" and row["requests"] >= 1 for row in rows)
    health = httpx2.get(gateway.url + "/admin/health", headers=admin).json()
    assert {entry["backend"] for entry in health} >= {"good", "broken"}
    time.sleep(0.5)  # the usage file is written every 0.2 s
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "usage", str(gateway.config), "--by", "key", "--json"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), **ENV, "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    by_key = {row["key"]: row for row in json.loads(out)["rows"]}
    assert by_key["team-a"]["requests"] >= 1 and by_key["thrifty"]["cost_usd"] > 0


def test_operational_endpoints_and_no_secret_in_the_log(gateway: GatewayProcess) -> None:
    assert httpx2.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = httpx2.get(gateway.url + "/metrics").text
    assert "inference_router_requests_total" in metrics
    log = gateway.log_path.read_text(errors="replace")
    assert all(secret not in log for secret in (*ENV.values(), "sk-backend-good-key"))


# --- disconnects ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_that_disconnects_frees_the_backend(gateway: GatewayProcess, fault: FaultServer) -> None:
    async with httpx2.AsyncClient(timeout=10) as client:
        call = asyncio.ensure_future(
            client.post(
                gateway.base_url + "/chat/completions",
                headers={"authorization": f"Bearer {TEAM}"},
                json={"model": "hang", "messages": HI},
            )
        )
        deadline = time.monotonic() + 5
        while fault.busy_connections("hang") == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert fault.busy_connections("hang") == 1
        call.cancel()
        left = time.monotonic()
        assert await fault.await_closed("hang", timeout=2.0, busy_only=True)
        assert time.monotonic() - left < 0.5  # 100 ms in the gateway, plus this poll and a shared 2-core machine


@pytest.mark.anyio
async def test_a_client_that_drops_a_stream_frees_the_backend(gateway: GatewayProcess, fault: FaultServer) -> None:
    fault.script("cut", ok(TEXT * 20, tps=20))
    try:
        async with (
            httpx2.AsyncClient(timeout=10) as client,
            client.stream(
                "POST",
                gateway.base_url + "/chat/completions",
                headers={"authorization": f"Bearer {TEAM}"},
                json={"model": "cut", "messages": HI, "stream": True},
            ) as response,
        ):
            async for _ in response.aiter_bytes():
                break  # the first tokens arrived; now leave
        left = time.monotonic()
        assert await fault.await_closed("cut", timeout=2.0, busy_only=True)
        assert time.monotonic() - left < 0.5
    finally:
        fault.script("cut", cut_after(3, TEXT))


# --- lifetime: SIGTERM, SIGHUP ----------------------------------------------------------------


@pytest.mark.anyio
async def test_sigterm_finishes_50_streams_in_flight_and_sighup_reloads(tmp_path: Path) -> None:
    with FaultServer(max_hold_s=10.0, good=ok(TEXT, tps=15)) as fault:
        config = tmp_path / "gateway.yaml"
        base = f"""
backends:
  good: {{provider: openai, base_url: "{fault.base_url("good")}", api_key: sk-backend-good-key}}
models:
  chat: {{deployments: [{{backend: good, model: m}}]}}
gateway: {{shutdown_grace_s: 20, watch: false}}
"""
        config.write_text(base)
        gateway = GatewayProcess(config).start()
        try:
            config.write_text(
                base.replace("models:\n", "models:\n  added: {deployments: [{backend: good, model: m}]}\n")
            )
            gateway.signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="none", max_retries=0) as client:
                while "added" not in {m.id async for m in client.models.list()}:
                    assert time.monotonic() < deadline, "SIGHUP did not reload the config"
                    await asyncio.sleep(0.05)
                with pytest.raises(openai.NotFoundError, match="known models: added, chat"):
                    await client.chat.completions.create(model="nowhere", messages=HI)

                async def one() -> str:
                    stream = await client.chat.completions.create(model="chat", messages=HI, stream=True)
                    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

                calls = [asyncio.ensure_future(one()) for _ in range(50)]
                while fault.count("good") < 50:
                    await asyncio.sleep(0.01)
                gateway.signal(signal.SIGTERM)
                texts = await asyncio.gather(*calls)
            assert texts == [TEXT] * 50
            assert gateway.process is not None and gateway.process.wait(timeout=20) == 0
        finally:
            gateway.kill()


@pytest.mark.anyio
async def test_requests_past_max_connections_get_a_503_in_openai_shape(fault: FaultServer, tmp_path: Path) -> None:
    """Past `gateway.max_connections` requests in flight, a request is refused at once with a 503 the
    SDK reads (its error shape, `Retry-After`), not uvicorn's plain text; health checks still answer,
    and the next request after one finishes is served."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
backends:
  good: {{provider: openai, base_url: "{fault.base_url("good")}", api_key: sk-backend-good-key}}
  hang: {{provider: openai, base_url: "{fault.base_url("hang")}", api_key: sk-backend-hang-key}}
models:
  chat: {{deployments: [{{backend: good, model: m}}]}}
  hang: {{deployments: [{{backend: hang, model: m}}]}}
gateway: {{max_connections: 2, watch: false}}
""")
    with GatewayProcess(config) as gateway:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="none", max_retries=0) as client:
            held = [asyncio.ensure_future(client.chat.completions.create(model="hang", messages=HI)) for _ in range(2)]
            deadline = time.monotonic() + 5
            while fault.busy_connections("hang") < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert fault.busy_connections("hang") == 2
            with pytest.raises(openai.InternalServerError) as refused:
                await client.chat.completions.create(model="chat", messages=HI)
            assert refused.value.status_code == 503 and refused.value.code == "overloaded"
            assert refused.value.response.headers["retry-after"] == "1"
            assert "max_connections" in refused.value.message
            assert httpx2.get(gateway.url + "/healthz").status_code == 200
            held[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held[0]
            deadline = time.monotonic() + 5
            while fault.busy_connections("hang") > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            reply = await client.chat.completions.create(model="chat", messages=HI)
            assert reply.choices[0].message.content == TEXT
            held[1].cancel()


def test_workers_answer_metrics_for_all_and_sighup_reloads_every_worker(fault: FaultServer, tmp_path: Path) -> None:
    """With `--workers 2` a scrape reaches one worker, yet counts every worker's calls (prometheus-client's
    multiprocess mode); SIGHUP to the supervisor restarts the workers on the edited config, all of them.
    prometheus-client comes with the `gateway` extra, so this never skips: without it, it fails."""
    config = tmp_path / "gateway.yaml"
    base = f"""
backends:
  good: {{provider: openai, base_url: "{fault.base_url("good")}", api_key: sk-backend-good-key}}
models:
  chat: {{deployments: [{{backend: good, model: m}}]}}
gateway: {{watch: false, shutdown_grace_s: 5}}
"""
    config.write_text(base)
    with GatewayProcess(config, workers=2) as gateway:
        body = {"model": "chat", "messages": HI}

        def call(_: int) -> int:
            with httpx2.Client(timeout=10) as client:  # a connection each: the workers share them out
                return client.post(gateway.base_url + "/chat/completions", json=body).status_code

        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(call, range(40))) == [200] * 40
        total = 'inference_router_requests_total{alias="chat",outcome="ok"} 40.0'
        for _ in range(8):
            with httpx2.Client(timeout=10) as client:
                scraped = client.get(gateway.url + "/metrics").text
            assert total in scraped, [line for line in scraped.splitlines() if "requests_total{" in line]

        config.write_text(base.replace("models:\n", "models:\n  added: {deployments: [{backend: good, model: m}]}\n"))
        gateway.signal(signal.SIGHUP)
        deadline, in_a_row = time.monotonic() + 20, 0
        while in_a_row < 8:  # fresh connections, so both workers are asked
            assert time.monotonic() < deadline, "SIGHUP did not reload every worker"
            try:
                with httpx2.Client(timeout=5) as client:
                    listed = {m["id"] for m in client.get(gateway.base_url + "/models").json()["data"]}
            except (httpx2.TransportError, ValueError):
                listed = set()  # a worker restarting
            in_a_row = in_a_row + 1 if "added" in listed else 0
            time.sleep(0.05)
        with httpx2.Client(timeout=10) as client:
            answered = client.post(gateway.base_url + "/chat/completions", json={**body, "model": "added"})
        assert answered.status_code == 200


# --- two processes, one Redis -----------------------------------------------------------------


def test_two_gateways_share_a_keys_limits_and_budget_through_redis(
    fault: FaultServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "shared.yaml"
    config.write_text(
        _config(fault, f"state: {{backend: redis, url: '{redis_server.url}', namespace: gw-test}}\n").replace(
            "rpm: 2", "rpm: 3"
        )
    )
    with (
        GatewayProcess(config, env=ENV, log=tmp_path / "a.log") as a,
        GatewayProcess(config, env=ENV, log=tmp_path / "b.log") as b,
    ):
        for gateway in (a, b, a):  # b runs two worker processes: three processes, one limit
            _client(gateway, SMALL).chat.completions.create(model="chat", messages=HI)
        with pytest.raises(openai.RateLimitError):
            _client(b, SMALL).chat.completions.create(model="chat", messages=HI)

        _client(a, THRIFTY).chat.completions.create(model="chat", messages=HI)
        with pytest.raises(openai.RateLimitError, match="daily budget"):
            _client(b, THRIFTY).chat.completions.create(model="chat", messages=HI)


# --- in process: tracing ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_server_span_continues_the_callers_trace(
    fault: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from router.gateway.app import Gateway

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # private: the global provider is never set
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = tmp_path / "gateway.yaml"
    config.write_text(_config(fault))
    app = Gateway(config, tracer_provider=provider)
    await app.startup()
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app), base_url="http://gateway") as client:
            response = await client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {TEAM}", "traceparent": f"00-{trace_id}-{parent_id}-01"},
                json={"model": "chat", "messages": HI},
            )
        assert response.status_code == 200 and response.headers["x-inference-router-backend"] == "good"
    finally:
        await app.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/chat/completions"]
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == trace_id and f"{span.parent.span_id:016x}" == parent_id
    assert dict(span.attributes or {})["http.response.status_code"] == 200


def test_serve_refuses_an_invalid_config_naming_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "backends:\n  a: {provider: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "models:\n  m: {deployments: [{backend: a, model: m}]}\n"
        "gateway:\n  keys:\n    k: {secret: short, models: [nope]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", str(config)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{config}:7: gateway.keys.k.secret: a gateway secret must be at least 16 characters" in done.stderr
    assert f"{config}:7: gateway.keys.k.models[0]: unknown model 'nope'" in done.stderr
