"""The gateway's added latency and throughput, side by side with calling the backend directly.

    python bench/gateway.py [--seconds 5] [--quick] [--litellm /tmp/litellm-venv] [--portkey /tmp/portkey]

One fast loopback backend (`bench/fake_server.py`, its own process) and, in front of it: nothing
(direct), `inference-router serve` with one worker, then with one worker per core, and — when
installed — LiteLLM's proxy (`litellm[proxy]` in the venv given by `--litellm`, one worker) and
Portkey's gateway (`@portkey-ai/gateway` under the folder given by `--portkey`, run with node).
Each is loaded with `wrk` (C, so the load generator is not the bottleneck; `apt-get install wrk`),
non-streamed and streamed (`include_usage`), at concurrency 1 and 64, for `--seconds` each.

Printed per cell: req/s and its ratio to direct, the median latency and the median added over
direct. Every target's answer is checked once before it is timed. On a 2-core machine the
backend, the gateway and wrk share the cores, and other work on the machine moves the figures:
compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]

import fake_server  # noqa: E402  (bench/fake_server.py)
import httpx2  # noqa: E402

from tests.gateway_process import GatewayProcess, free_port  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something about foxes and dogs."}]
MODES = ("non-stream", "stream")
CONCURRENCY = (1, 64)


@dataclass
class Target:
    """Something that answers `POST {base}/chat/completions` for model `m`; `pid`: its process (tree)."""

    name: str
    base: str
    headers: dict[str, str]
    pid: int | None = None


@dataclass
class Cell:
    rps: float
    p50_ms: float
    cpu_ms: float | None
    """CPU time the target's processes spent per request (robust to a busy machine)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(p, 0.0) for p in tree)


def body(stream: bool) -> str:
    data: dict[str, object] = {"model": fake_server.MODEL, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        data |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(data)


def wrk_script(folder: Path, target: Target, stream: bool) -> Path:
    """The Lua script wrk posts with."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body(stream))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers.items()]
    lines.append('wrk.headers["content-type"] = "application/json"')
    path = folder / f"{re.sub(r'[^a-z0-9]+', '-', target.name.lower())}-{int(stream)}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(target: Target, script: Path, concurrency: int, seconds: float) -> Cell:
    threads = min(2, concurrency)
    cpu_before = cpu_seconds(target.pid) if target.pid else None
    argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*argv, target.base + "/chat/completions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{target.name}: {errors.group(1)} error responses under load:\n{out}")
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu_ms = None
    if cpu_before is not None and target.pid and requests:
        cpu_ms = (cpu_seconds(target.pid) - cpu_before) * 1000 / requests
    return Cell(rps, float(p50.group(1)) * _UNITS[p50.group(2)], cpu_ms)


def check(target: Target, stream: bool) -> None:
    """One call, whose answer must be the backend's text."""
    response = httpx2.post(
        target.base + "/chat/completions",
        content=body(stream),
        headers={**target.headers, "content-type": "application/json"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:300]}")
    if stream:
        text = ""
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    text += choice.get("delta", {}).get("content") or ""
    else:
        text = response.json()["choices"][0]["message"]["content"]
    if text != fake_server.TEXT:
        raise RuntimeError(f"{target.name}: unexpected answer {text!r}")


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx2.HTTPError):
            httpx2.get(url, timeout=1)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")


@contextlib.contextmanager
def ours(folder: Path, backend: str, workers: int) -> Iterator[Target]:
    config = folder / f"gateway-{workers}.yaml"
    config.write_text(
        f"backends:\n  fake: {{provider: openai, base_url: '{backend}', api_key: sk-bench}}\n"
        f"models:\n  {fake_server.MODEL}: {{deployments: [{{backend: fake, model: {fake_server.MODEL}}}]}}\n"
        "gateway:\n  keys: {bench: {secret: sk-bench-key-0123456789}}\n"
    )
    with GatewayProcess(config, workers=workers, log=folder / f"gateway-{workers}.log") as gateway:
        name = f"ours, {workers} worker{'s' if workers > 1 else ''}"
        assert gateway.process is not None
        headers = {"authorization": "Bearer sk-bench-key-0123456789"}
        yield Target(name, gateway.base_url, headers, gateway.process.pid)


@contextlib.contextmanager
def litellm(folder: Path, venv: Path, backend: str) -> Iterator[Target | None]:
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        print(f"note: LiteLLM skipped: no {binary} (python3 -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]')")
        yield None
        return
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {fake_server.MODEL}\n"
        f"    litellm_params: {{model: openai/{fake_server.MODEL}, api_base: '{backend}', api_key: sk-bench}}\n"
        "general_settings: {master_key: sk-bench-master-0123456789}\n"
    )
    port = free_port()
    with open(folder / "litellm.log", "wb") as log:
        process = subprocess.Popen(
            [str(binary), "--config", str(config), "--port", str(port), "--num_workers", "1"],
            stdout=log,
            stderr=log,
            env={**os.environ, "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"},
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", 120)
        headers = {"authorization": "Bearer sk-bench-master-0123456789"}
        yield Target("LiteLLM proxy", f"http://127.0.0.1:{port}/v1", headers, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextlib.contextmanager
def portkey(folder: Path, where: Path, backend: str) -> Iterator[Target | None]:
    entry = where / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if shutil.which("node") is None or not entry.exists():
        print(f"note: Portkey skipped: no {entry} (cd {where} && npm i @portkey-ai/gateway)")
        yield None
        return
    port = free_port()
    with open(folder / "portkey.log", "wb") as log:
        process = subprocess.Popen(
            ["node", str(entry), f"--port={port}", "--headless"], stdout=log, stderr=log, cwd=where
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", 60)
        headers = {"authorization": "Bearer sk-bench", "x-portkey-provider": "openai", "x-portkey-custom-host": backend}
        yield Target("Portkey gateway", f"http://127.0.0.1:{port}/v1", headers, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=20)


def measure(target: Target, folder: Path, seconds: float, results: dict[tuple[str, str, int], Cell]) -> None:
    for mode in MODES:
        stream = mode == "stream"
        try:
            check(target, stream)
        except Exception as exc:  # a competitor that cannot do it: say so, keep going
            print(f"note: {target.name} {mode}: {exc}")
            continue
        script = wrk_script(folder, target, stream)
        for concurrency in CONCURRENCY:
            run_wrk(target, script, concurrency, min(1.0, seconds))  # warm up: connections, caches, JIT
            cell = run_wrk(target, script, concurrency, seconds)
            results[(target.name, mode, concurrency)] = cell
            cpu = f"  cpu {cell.cpu_ms:.3f} ms/req" if cell.cpu_ms is not None else ""
            line = f"  {target.name:18} {mode:10} c={concurrency:<3} {cell.rps:9,.0f} req/s  p50 {cell.p50_ms:7.3f} ms"
            print(line + cpu, flush=True)


def report(results: dict[tuple[str, str, int], Cell], names: list[str]) -> None:
    print("\n| target | mode | concurrency | req/s | ÷ direct | p50 ms | added p50 ms | proxy CPU ms/req |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in MODES:
        for concurrency in CONCURRENCY:
            direct = results.get(("direct", mode, concurrency))
            for name in names:
                cell = results.get((name, mode, concurrency))
                if cell is None or direct is None:
                    continue
                ratio = cell.rps / direct.rps
                added = cell.p50_ms - direct.p50_ms
                row = f"| {name} | {mode} | {concurrency} | {cell.rps:,.0f} | {ratio:.2f}× | {cell.p50_ms:.3f}"
                cpu = f"{cell.cpu_ms:.3f}" if cell.cpu_ms is not None else "–"
                print(row + f" | {added:+.3f} | {cpu} |")
    ours_one = "ours, 1 worker"
    for other in ("Portkey gateway", "LiteLLM proxy"):
        for mode in MODES:
            a, b = results.get((ours_one, mode, 64)), results.get((other, mode, 64))
            if a and b:
                line = f"ours (1 worker) ÷ {other}, {mode}, c=64: {a.rps / b.rps:.2f}× throughput"
                if a.cpu_ms and b.cpu_ms:
                    line += f", {b.cpu_ms / a.cpu_ms:.2f}× less CPU per request"
                print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 s per cell, ours only")
    parser.add_argument("--litellm", type=Path, default=Path("/tmp/litellm-venv"), help="a venv with litellm[proxy]")
    parser.add_argument("--portkey", type=Path, default=Path("/tmp/portkey"), help="a folder with @portkey-ai/gateway")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/gateway.py needs wrk: apt-get install wrk")
    seconds = 1.0 if args.quick else args.seconds
    cores = os.cpu_count() or 1
    results: dict[tuple[str, str, int], Cell] = {}
    names = ["direct"]
    print(f"{cores} cores; {seconds:g} s per cell; backend bench/fake_server.py in its own process")
    with fake_server.server_process(ports=1) as server, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        backend = f"http://127.0.0.1:{server.ports[0]}/v1"
        measure(Target("direct", backend, {"authorization": "Bearer sk-bench"}), folder, seconds, results)
        for workers in sorted({1, cores}):
            with ours(folder, backend, workers) as target:
                names.append(target.name)
                measure(target, folder, seconds, results)
        if not args.quick:
            for start in (partial_portkey(args.portkey), partial_litellm(args.litellm)):
                try:
                    with start(folder, backend) as target:
                        if target is not None:
                            names.append(target.name)
                            measure(target, folder, seconds, results)
                except RuntimeError as exc:  # a competitor that does not start: say so, report the rest
                    print(f"note: skipped: {exc}")
    report(results, names)


def partial_portkey(where: Path):  # type: ignore[no-untyped-def]
    return lambda folder, backend: portkey(folder, where, backend)


def partial_litellm(venv: Path):  # type: ignore[no-untyped-def]
    return lambda folder, backend: litellm(folder, venv, backend)


if __name__ == "__main__":
    main()
