"""Load reported by self-hosted servers: the Prometheus parser, vLLM and llama.cpp reads, the poller.

vLLM is a loopback HTTP server speaking its /metrics format; llama.cpp is the real server.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from providers.base import OpenAICompatible
from providers.errors import AuthFailed, ConnectionFailed, Overloaded, ProviderTimeout, ServerError
from providers.llamacpp import LlamaCppProvider
from providers.load import LoadReporter, ServerLoad, metric_values, server_root
from providers.vllm import VLLMProvider, vllm_load
from router.local.llamacpp_server import free_port
from router.path.load import LoadPoller

pytestmark = pytest.mark.anyio

# A vLLM 0.33 /metrics page (prometheus_client text format), two data-parallel engines.
VLLM_METRICS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 15230.0
python_gc_objects_collected_total{generation="1"} 2077.0
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1.2584034304e+010
# HELP http_requests_total Total number of requests by method, status and handler.
# TYPE http_requests_total counter
http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 42.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-0.6B"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-0.6B"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="Qwen/Qwen3-0.6B",reason="capacity"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="Qwen/Qwen3-0.6B",reason="deferred"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-0.6B"} 0.75
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.764512345123e+09
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.2345e+06
vllm:prompt_tokens_total{engine="1",model_name="Qwen/Qwen3-0.6B"} 5.0e+05
# HELP vllm:admission_rejections_total Requests rejected by admission control.
# TYPE vllm:admission_rejections_total counter
vllm:admission_rejections_total{engine="0",model_name="Qwen/Qwen3-0.6B",reason="max_num_queued_reqs"} 7.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="24831"} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-0.6B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.005",model_name="Qwen/Qwen3-0.6B"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-0.6B"} 42.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen3-0.6B"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.8320000171661377
"""

# What the real llama.cpp server (xllamacpp 2026.10.11549, `--metrics`) answers, abridged.
LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 22
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3000
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 3022
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 915.123
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 2.5
"""


# --- the Prometheus parser ---------------------------------------------------------------------


def test_parser_on_vllm_metrics() -> None:
    names = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:cache_config_info",
        "process_virtual_memory_bytes",
        "vllm:gpu_cache_usage_perc",
    )
    values = metric_values(VLLM_METRICS, names)
    assert values["vllm:num_requests_running"] == [3.0, 2.0]
    assert values["vllm:num_requests_waiting"] == [1.0, 0.0]  # not the `_by_reason` samples
    assert values["vllm:kv_cache_usage_perc"] == [0.25, 0.75]
    assert values["vllm:prompt_tokens_total"] == [1.2345e6, 5e5]
    assert values["vllm:num_preemptions_total"] == [0.0]  # not `_created`
    assert values["vllm:time_to_first_token_seconds_bucket"] == [0.0, 3.0, 42.0]
    assert values["vllm:cache_config_info"] == [1.0]
    assert values["process_virtual_memory_bytes"] == [1.2584034304e10]
    assert "vllm:gpu_cache_usage_perc" not in values  # gone in 0.33
    assert vllm_load(VLLM_METRICS) == ServerLoad(running=5, waiting=1, slots=None, kv_cache_usage=0.5)


def test_parser_on_llamacpp_metrics() -> None:
    values = metric_values(LLAMACPP_METRICS, ["llamacpp:requests_processing", "llamacpp:requests_deferred"])
    assert values == {"llamacpp:requests_processing": [3.0], "llamacpp:requests_deferred": [2.0]}


def test_parser_edge_cases() -> None:
    text = (
        "# EOF-less comment with m 99\n"
        "\n"
        "m 1.5e+01 1700000000000\n"  # exponent and a timestamp
        'm{a="x}y",b="say \\"hi\\" {}"} 2\n'  # `}` and escaped quotes inside label values
        "m{ } -1\n"
        "   m\t3\r\n"  # leading blanks, a tab, CRLF
        "m NaN\n"  # no value: skipped
        "m +Inf\n"
        "m not-a-number\n"
        "m\n"
        'm{a="unterminated} 5\n'
        "mm 100\n"
        "m_total 100\n"
        'm 4 # {trace_id="abc"} 1.0 1700000000.1\n'  # an OpenMetrics exemplar
    )
    values = metric_values(text, ["m", "absent"])["m"]
    assert values[:4] == [15.0, 2.0, -1.0, 3.0] and math.isinf(values[4]) and values[5:] == [4.0]
    assert metric_values(text, ["absent"]) == {}
    assert vllm_load("vllm:num_requests_running NaN\nvllm:kv_cache_usage_perc +Inf\n") == ServerLoad(
        None, None, None, None
    )
    assert vllm_load('vllm:gpu_cache_usage_perc{model_name="m"} 0.4\n').kv_cache_usage == 0.4  # pre-0.10 name
    assert server_root("http://h:8000/v1") == server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:8000/vllm/v1") == "http://h:8000/vllm"


def test_only_self_hosted_adapters_report_load() -> None:
    assert isinstance(VLLMProvider(), LoadReporter) and isinstance(LlamaCppProvider(), LoadReporter)
    assert not hasattr(OpenAICompatible(base_url="http://h/v1"), "read_load")
    assert not isinstance(OpenAICompatible(base_url="http://h/v1"), LoadReporter)


# --- a loopback HTTP server that answers what the test tells it ---------------------------------


@dataclass
class Fake:
    """Routes of a loopback HTTP server: path → (status, body); every request is recorded."""

    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
    url: str = ""

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if state.delay_s:
                threading.Event().wait(state.delay_s)
            status, body = state.routes.get(self.path, (404, '{"detail":"Not Found"}'))
            raw = body.encode()
            self.send_response(status)
            kind = "text/plain; version=0.0.4; charset=utf-8" if "metrics" in self.path and status == 200 else "json"
            self.send_header("content-type", kind if kind != "json" else "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(trust_env=False) as c:
        yield c


def vllm_page(running: float, waiting: float, kv: float) -> str:
    """A vLLM /metrics page with one engine's load split over two label sets."""
    return (
        VLLM_METRICS.replace(
            'vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 3.0',
            f'vllm:num_requests_running{{engine="0",model_name="Qwen/Qwen3-0.6B"}} {running}',
        )
        .replace(
            'vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.0',
            f'vllm:num_requests_waiting{{engine="0",model_name="Qwen/Qwen3-0.6B"}} {waiting}',
        )
        .replace(
            'vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.25',
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="Qwen/Qwen3-0.6B"}} {kv}',
        )
    )


# --- vLLM ---------------------------------------------------------------------------------------


async def test_vllm_load_follows_the_metrics(fake: Fake, client: httpx2.AsyncClient) -> None:
    vllm = VLLMProvider(base_url=fake.url + "/v1", api_key="vllm-key")
    fake.routes["/metrics"] = (200, vllm_page(0, 0, 0.0))
    assert await vllm.read_load(client, timeout_s=1) == ServerLoad(2, 0, None, 0.375)
    fake.routes["/metrics"] = (200, vllm_page(30, 7, 0.95))
    assert await vllm.read_load(client, timeout_s=1) == ServerLoad(32, 7, None, 0.85)
    path, headers = fake.seen[-1]
    assert path == "/metrics" and headers["authorization"] == "Bearer vllm-key"
    assert "content-type" not in headers and headers["accept"].startswith("text/plain")


async def test_vllm_read_failures(fake: Fake, client: httpx2.AsyncClient) -> None:
    vllm = VLLMProvider(base_url=fake.url + "/v1")
    fake.routes["/metrics"] = (500, "Internal Server Error")
    with pytest.raises(ServerError):
        await vllm.read_load(client, timeout_s=1)
    fake.routes["/metrics"], fake.delay_s = (200, VLLM_METRICS), 0.4
    started = anyio.current_time()
    with pytest.raises(ProviderTimeout):
        await vllm.read_load(client, timeout_s=0.1)
    assert anyio.current_time() - started < 0.3
    closed = VLLMProvider(base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ConnectionFailed) as caught:
        await closed.read_load(client, timeout_s=1)
    assert not caught.value.retryable  # refused


# --- llama.cpp -------------------------------------------------------------------------------------


async def test_llamacpp_idle_load(llama_pair: Any, client: httpx2.AsyncClient) -> None:
    llama = LlamaCppProvider(base_url=llama_pair[1].base_url)
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(running=0, waiting=0, slots=4, kv_cache_usage=None)
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(0, 0, 4, None)


async def test_llamacpp_sends_its_key(tiny_model: Path, client: httpx2.AsyncClient) -> None:
    from router.local.llamacpp_server import LlamaCppServer

    with LlamaCppServer(tiny_model, api_key="llama-key", log_path=tiny_model.with_name("keyed.log")) as server:
        assert await LlamaCppProvider(base_url=server.base_url, api_key="llama-key").read_load(
            client, timeout_s=1
        ) == ServerLoad(0, 0, 4, None)
        with pytest.raises(AuthFailed):  # /props and /metrics need the key
            await LlamaCppProvider(base_url=server.base_url).read_load(client, timeout_s=1)


async def generate(client: httpx2.AsyncClient, server: Any, started: anyio.Event, max_tokens: int = 3000) -> None:
    """Stream a long answer until cancelled, setting `started` at the first chunk."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    async with client.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}) as r:
        async for _ in r.aiter_bytes():
            started.set()


async def test_llamacpp_busy_and_queued(llama_server: Any, client: httpx2.AsyncClient) -> None:
    llama = LlamaCppProvider(base_url=llama_server.base_url)
    async with httpx2.AsyncClient(trust_env=False, timeout=10) as streams, anyio.create_task_group() as tg:
        first = anyio.Event()
        tg.start_soon(generate, streams, llama_server, first)
        await first.wait()
        load = await llama.read_load(client, timeout_s=1)
        assert load.running is not None and load.running >= 1 and load.slots == 4
        for _ in range(5):  # 6 streams on 4 slots: 2 wait for a slot
            tg.start_soon(generate, streams, llama_server, anyio.Event())
        with anyio.fail_after(2):
            while (load := await llama.read_load(client, timeout_s=1)).waiting != 2:
                await anyio.sleep(0.01)
        assert load == ServerLoad(4, 2, 4, None)
        tg.cancel_scope.cancel()
    with anyio.fail_after(2):  # closing the streams frees the slots
        while (load := await llama.read_load(client, timeout_s=1)).running:
            await anyio.sleep(0.01)
    assert load == ServerLoad(0, 0, 4, None)


async def test_llamacpp_without_metrics_reads_slots(fake: Fake, client: httpx2.AsyncClient) -> None:
    """A server started without --metrics answers 501 there; /slots still tells the busy slots."""
    off = (
        '{"error":{"code":501,"message":"This server does not support metrics endpoint.","type":"not_supported_error"}}'
    )
    slot = '{"id":%d,"n_ctx":4096,"speculative":false,"is_processing":%s}'
    fake.routes = {
        "/props": (200, '{"total_slots":3,"model_alias":"tiny-llama"}'),
        "/metrics": (501, off),
        "/slots": (200, "[" + ",".join(slot % (i, "true" if i else "false") for i in range(3)) + "]"),
    }
    llama = LlamaCppProvider(base_url=fake.url + "/v1/", api_key="k")
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(2, None, 3, None)
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(2, None, 3, None)
    assert fake.paths() == ["/props", "/metrics", "/slots", "/slots"]  # /props and the 501 only once
    assert all(headers["authorization"] == "Bearer k" for _, headers in fake.seen)
    fake.routes["/slots"] = (501, off.replace("metrics", "slots"))
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(None, None, 3, None)  # alive, load unknown
    loading = '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    fake.routes["/slots"] = (503, loading)
    fake.seen.clear()
    with pytest.raises(Overloaded):
        await llama.read_load(client, timeout_s=1)
    fake.routes["/slots"] = (200, "[" + ",".join(slot % (i, "true") for i in range(3)) + "]")
    assert await llama.read_load(client, timeout_s=1) == ServerLoad(3, None, 3, None)
    assert fake.paths() == ["/slots", "/props", "/metrics", "/slots"]  # a failure drops what was learnt


# --- the poller ------------------------------------------------------------------------------------


class Counting:
    """Wraps a target: counts probes, the most at once, and when each started."""

    def __init__(self, target: LoadReporter) -> None:
        self.target = target
        self.name = target.name
        self.in_flight = 0
        self.most_in_flight = 0
        self.starts: list[float] = []

    async def read_load(self, client: httpx2.AsyncClient, *, timeout_s: float) -> ServerLoad:
        self.starts.append(anyio.current_time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.01)  # room for an overlapping probe, were there one
            return await self.target.read_load(client, timeout_s=timeout_s)
        finally:
            self.in_flight -= 1

    def between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.starts)


async def test_poller_on_a_real_server(llama_server: Any, llama_pair: Any, client: httpx2.AsyncClient) -> None:
    doomed = Counting(LlamaCppProvider(base_url=llama_server.base_url, name="doomed"))
    steady = Counting(LlamaCppProvider(base_url=llama_pair[0].base_url, name="steady"))
    seen: list[tuple[float, str, ServerLoad | None]] = []

    def sink(name: str, load: ServerLoad | None) -> None:
        seen.append((anyio.current_time(), name, load))

    poller = LoadPoller({"doomed": doomed, "steady": steady}, client, sink, interval_s=0.05, timeout_s=0.5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(poller.run)
        t0 = anyio.current_time()
        await anyio.sleep(0.3)
        llama_server.kill()
        t1 = anyio.current_time()
        await anyio.sleep(0.7)
        tg.cancel_scope.cancel()
    t2 = anyio.current_time()
    doomed_loads = [load for _, name, load in seen if name == "doomed"]
    assert doomed_loads[0] == ServerLoad(0, 0, 4, None) and doomed_loads[-1] is None
    assert None not in doomed_loads[: doomed_loads.index(None)] and set(doomed_loads[doomed_loads.index(None) :]) == {
        None
    }
    alive, dead = doomed.between(t0, t1) / (t1 - t0), doomed.between(t1 + 0.2, t2) / (t2 - t1 - 0.2)
    assert alive > 10 and dead < alive / 3  # backed off: 2×, 4×, then 8× the interval
    assert steady.between(t1, t2) / (t2 - t1) > 10  # a dead neighbour doesn't slow the others
    assert all(load is not None and load.slots == 4 for _, name, load in seen if name == "steady")
    assert doomed.most_in_flight == 1 and steady.most_in_flight == 1


class Scripted:
    """A target that answers or fails as the test says, optionally hanging past every timeout."""

    def __init__(self) -> None:
        self.name = "scripted"
        self.up = True
        self.hang = False
        self.probes: list[float] = []

    async def read_load(self, client: httpx2.AsyncClient, *, timeout_s: float) -> ServerLoad:
        self.probes.append(anyio.current_time())
        if self.hang:
            await anyio.sleep_forever()
        if not self.up:
            raise ConnectionFailed("scripted: down")
        return ServerLoad(1, 0, 2, None)


async def test_poller_backs_off_and_recovers(client: httpx2.AsyncClient) -> None:
    target = Scripted()
    seen: list[ServerLoad | None] = []
    poller = LoadPoller({"t": target}, client, lambda _, load: seen.append(load), interval_s=0.02, timeout_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(poller.run)
        await anyio.sleep(0.06)
        target.up = False
        await anyio.sleep(0.4)
        target.up = True
        await anyio.sleep(0.25)  # the next probe comes at most 8× the interval later
        recovered = len(target.probes)
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(target.probes, target.probes[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.16, abs=0.04)  # capped at 8 × 0.02
    assert len(target.probes) - recovered >= 3  # back to the normal interval
    assert seen[0] is not None and None in seen and seen[-1] is not None


async def test_poller_survives_a_raising_sink_and_a_hanging_target(
    client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    target, hanging = Scripted(), Scripted()
    hanging.hang = True
    calls: list[tuple[str, ServerLoad | None]] = []

    def sink(name: str, load: ServerLoad | None) -> None:
        calls.append((name, load))
        raise RuntimeError("sink bug")

    poller = LoadPoller({"ok": target, "stuck": hanging}, client, sink, interval_s=0.02, timeout_s=0.01)
    with caplog.at_level(logging.WARNING, logger="router"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    assert calls.count(("ok", ServerLoad(1, 0, 2, None))) >= 8
    assert calls.count(("stuck", None)) >= 2  # given up on at 2× its timeout, then backed off
    assert any("sink bug" in (r.exc_text or "") for r in caplog.records if r.name == "router")
    assert any("stuck is not answering" in r.getMessage() for r in caplog.records)


async def test_poller_without_targets_waits(client: httpx2.AsyncClient) -> None:
    with anyio.move_on_after(0.05) as scope:
        await LoadPoller({}, client, lambda *_: None).run()
    assert scope.cancelled_caught
    with pytest.raises(ValueError):
        LoadPoller({}, client, lambda *_: None, interval_s=0)
