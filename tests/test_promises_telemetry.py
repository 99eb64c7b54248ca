"""README "Telemetry", "Reloading the config" and "Hedging": OpenTelemetry spans with `otel: auto`/`on`,
Prometheus served on `prometheus_port`, `usage`/`telemetry` read once, the file watch following
atomic renames and symlink swaps, and hedging after a percentile of the measured TTFT."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from router import AsyncRouter, route_of
from router.observe.usage import read_usage
from tests.fault_server import FaultServer, ok

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
HI = [{"role": "user", "content": "hi"}]


def one(fault: FaultServer, name: str = "a", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "backends": {n: {"provider": "openai", "base_url": fault.base_url(n)} for n in fault.names},
        "models": {"m": {"deployments": [{"backend": name, "model": "m"}]}},
        "retry": {"attempts_per_deployment": 1},
    }
    base.update(overrides)
    return base


SPANS = textwrap.dedent("""
    import json, sys, anyio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from router import AsyncRouter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the application's global provider
    config = json.loads(sys.argv[1])
    async def main():
        seen = {}
        for mode in ("default", "auto", "on", "off"):
            cfg = dict(config, telemetry={} if mode == "default" else {"otel": mode})
            exporter.clear()
            async with AsyncRouter.from_config(cfg) as router:
                await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            seen[mode] = sorted(s.name for s in exporter.get_finished_spans())
        print(json.dumps(seen))
    anyio.run(main)
""")


def test_otel_auto_and_on_trace_calls_to_the_global_provider() -> None:
    """`telemetry.otel` `auto` (the default) and `on` give each call a span with an attempt child; `off` none.

    In a child process: the global tracer provider can be set once per process."""
    with FaultServer(a=ok("from a")) as fault:
        result = subprocess.run(
            [sys.executable, "-c", SPANS, json.dumps(one(fault))],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for mode in ("default", "auto", "on"):
        assert "chat m" in seen[mode] and len(seen[mode]) == 2, (mode, seen[mode])
    assert seen["off"] == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_prometheus_port_serves_the_metrics_on_loopback() -> None:
    """`telemetry.prometheus_port`: the metrics are scrapeable over HTTP while the router runs."""
    port = _free_port()
    with FaultServer(a=ok("from a")) as fault:
        cfg = one(fault, telemetry={"otel": "off", "prometheus": True, "prometheus_port": port})
        async with AsyncRouter.from_config(cfg) as client:
            for _ in range(3):
                await client.chat.completions.create(model="m", messages=HI)
            async with httpx2.AsyncClient(trust_env=False) as http:
                scraped = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert scraped.status_code == 200
    lines = [line for line in scraped.text.splitlines() if line.startswith("inference_router_requests_total{")]
    assert any('alias="m"' in line and line.endswith(" 3.0") for line in lines), lines
    with socket.socket() as sock:  # closing the router stopped the server and freed its port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


async def test_usage_and_telemetry_are_read_once_and_a_reload_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that changes `usage` or `telemetry` keeps the first ones (and warns); the rest applies."""
    first, second = tmp_path / "first.sqlite", tmp_path / "second.sqlite"
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        cfg = one(fault, usage={"path": str(first)}, telemetry={"otel": "off", "prometheus": True})
        async with AsyncRouter.from_config(cfg) as client:
            await client.chat.completions.create(model="m", messages=HI)
            changed = one(fault, "b", usage={"path": str(second)}, telemetry={"otel": "off", "prometheus": False})
            await client.reload(changed)
            reply = await client.chat.completions.create(model="m", messages=HI)
            assert route_of(reply).backend == "b"  # the rest of the new config is in force
            assert client.metrics is not None
            exposition = client.metrics.exposition()
    assert any("take effect when a new router is made" in r.message for r in caplog.records)
    assert not second.exists()
    assert sum(row.requests for row in read_usage(first, group_by=())) == 2
    assert 'inference_router_requests_total{alias="m",outcome="ok"} 2.0' in exposition


def _yaml(backend: str, fault: FaultServer) -> str:
    return json.dumps(one(fault, backend, telemetry={"otel": "off"}))  # JSON is YAML


async def _served_by(client: AsyncRouter, backend: str, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        reply = await client.chat.completions.create(model="m", messages=HI)
        if route_of(reply).backend == backend:
            return
        assert time.monotonic() < deadline, f"the watch did not pick up the change to {backend}"
        await anyio.sleep(0.05)


async def test_the_file_watch_follows_an_atomic_rename(tmp_path: Path) -> None:
    """An editor's save (write a temp file, rename it over the config) is reloaded."""
    path = tmp_path / "router.yaml"
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        path.write_text(_yaml("a", fault))
        async with AsyncRouter.from_config(path, watch=0.05) as client:
            await _served_by(client, "a")
            temp = tmp_path / ".router.yaml.swp"
            temp.write_text(_yaml("b", fault))
            os.replace(temp, path)
            await _served_by(client, "b")


async def test_the_file_watch_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes ConfigMap style: router.yaml → ..data/router.yaml, and `..data` is swapped atomically."""
    with FaultServer(a=ok("from a"), b=ok("from b")) as fault:
        for version, backend in (("v1", "a"), ("v2", "b")):
            (tmp_path / version).mkdir()
            (tmp_path / version / "router.yaml").write_text(_yaml(backend, fault))
        (tmp_path / "..data").symlink_to("v1")
        path = tmp_path / "router.yaml"
        path.symlink_to(Path("..data") / "router.yaml")
        async with AsyncRouter.from_config(path, watch=0.05) as client:
            await _served_by(client, "a")
            (tmp_path / "..data_tmp").symlink_to("v2")
            os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap kubelet does
            await _served_by(client, "b")


async def test_hedging_waits_a_percentile_of_the_measured_ttft_not_after_s() -> None:
    """`hedge.after_percentile`: once a deployment's TTFT is known, the hedge goes after its p90,
    not after the (here long) `after_s`."""
    quick = ok("from a", ttft=0.02)
    with FaultServer(a=[quick] * 12 + [ok("from a", ttft=2.0)], b=ok("from b")) as fault:
        warm = [{"name": "warm-up", "match": {"tags": ["warm-up"]}, "set": {"hedge": False}}]
        cfg = one(fault, telemetry={"otel": "off"}, rules=warm)
        cfg["models"]["m"] = {
            "deployments": [{"backend": "a", "model": "m"}, {"backend": "b", "model": "m"}],
            "hedge": {"after_s": 1.5, "after_percentile": 0.9, "max_extra_fraction": 1.0},
        }
        async with AsyncRouter.from_config(cfg) as client:
            for _ in range(12):  # a's TTFT becomes known: about 20 ms (unhedged, so every sample is a's)
                stream = await client.chat.completions.create(
                    model="m", messages=HI, stream=True, route={"tags": ["warm-up"]}
                )
                async for _ in stream:
                    pass
                assert route_of(stream).backend == "a" and not route_of(stream).hedged
            started = time.monotonic()
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            async for _ in stream:
                pass
            took = time.monotonic() - started
    record = route_of(stream)
    assert record.hedged and record.backend == "b"
    assert took < 1.0, f"the hedge waited {took:.2f}s: after_s, not the TTFT percentile"
