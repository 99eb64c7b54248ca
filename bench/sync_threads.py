"""The sync clients from a thread pool: `openai.OpenAI` against `Router`, in one run.

    python bench/sync_threads.py [--threads 32] [--calls 50] [--delay-ms 2] [--rounds 3]

Web apps, Celery workers and batch scripts call the sync client from many threads. Two loopback
mock backends (`bench/fake_server.py`, its own OS process) answer every request after
`--delay-ms`; `--threads` threads share one client and each makes `--calls` calls, every other
one streamed (consumed to the end); every answer's text is checked. The clients take turns,
`--rounds` times each, in alternating order; the table gives calls/s per round and the median,
and the client process's CPU per call. Target: `Router` >= 1.3x `openai.OpenAI` calls/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]

import fake_server  # noqa: E402  (bench/fake_server.py)

MESSAGES = [{"role": "user", "content": "Say something about foxes and dogs."}]


def answer_text(client: Any, model: str, stream: bool) -> str:
    """One call, its text (a stream read to its end)."""
    if not stream:
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16)
        return str(reply.choices[0].message.content)
    chunks = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def run(client: Any, model: str, threads: int, calls: int) -> tuple[float, float]:
    """Every thread's calls; (calls/s, client CPU ms per call). A wrong answer raises."""

    def worker(index: int) -> None:
        for n in range(calls):
            text = answer_text(client, model, stream=(index + n) % 2 == 1)
            if text != fake_server.TEXT:
                raise AssertionError(f"wrong answer: {text!r}")

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total = threads * calls
    return total / wall, cpu / total * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import openai

    from router import Router

    with fake_server.server_process(ports=2, delay_ms=args.delay_ms) as server:
        urls = [f"http://127.0.0.1:{port}/v1" for port in server.ports]
        sdk = openai.OpenAI(base_url=urls[0], api_key="x", max_retries=0)
        backends = {f"b{i}": {"provider": "openai", "base_url": url, "api_key": "x"} for i, url in enumerate(urls)}
        deployments = [{"backend": name, "model": fake_server.MODEL} for name in backends]
        router = Router(
            {"backends": backends, "models": {"bench": {"deployments": deployments}}, "telemetry": {"otel": "off"}}
        )
        clients: dict[str, tuple[Any, str]] = {"openai.OpenAI": (sdk, fake_server.MODEL), "Router": (router, "bench")}
        for client, model in clients.values():  # warm up: pools, code paths
            run(client, model, args.threads, 4)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        order: Callable[[int], list[str]] = lambda r: list(clients) if r % 2 == 0 else list(reversed(clients))  # noqa: E731
        for round_ in range(args.rounds):
            for name in order(round_):
                client, model = clients[name]
                results[name].append(run(client, model, args.threads, args.calls))
        router.close()
        sdk.close()

    print(f"{args.threads} threads x {args.calls} calls (half streamed), backends answering in {args.delay_ms:g} ms")
    print(f"{'client':<15} {'calls/s per round':<32} {'median':>8} {'cpu ms/call':>12}")
    medians = {}
    for name, rows in results.items():
        rates = [r for r, _ in rows]
        medians[name] = statistics.median(rates)
        cpu = statistics.median(c for _, c in rows)
        print(f"{name:<15} {', '.join(f'{r:,.0f}' for r in rates):<32} {medians[name]:>8,.0f} {cpu:>12.2f}")
    ratio = medians["Router"] / medians["openai.OpenAI"]
    print(f"\nRouter / openai.OpenAI: {ratio:.2f}x calls/s  (target >= 1.3x: {'MET' if ratio >= 1.3 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
