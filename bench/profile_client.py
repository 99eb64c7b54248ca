"""cProfile one client of the overhead benchmark over its timed requests only, per request.

    python bench/profile_client.py router stream [--concurrency 64] [--requests 3000]
    python bench/profile_client.py "raw httpx2" stream

Starts the fake server, warms the client up, then profiles `--requests` calls and prints the
functions with the most own time, with calls per request (for `async def` functions cProfile
counts every resumption as a call) and microseconds per request, then the project's own
functions (router/, providers/, policies/) by cumulative time. cProfile inflates small calls;
use it for call counts and py-spy (see bench/hotspots.py) for proportions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/x.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package: the repo root goes first, bench/ last (for its helper modules).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]

import fake_server  # noqa: E402  (bench/ is on the path only now)
import overhead  # noqa: E402

OURS = ("/router/", "/providers/", "/policies/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("client", choices=overhead.CLIENTS)
    parser.add_argument("mode", choices=overhead.MODES)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("-o", "--output", type=Path, default=None, help="also save the pstats file here")
    args = parser.parse_args()

    profiler = cProfile.Profile()
    with fake_server.server_process(ports=3) as server:
        base_urls = [f"http://127.0.0.1:{port}/v1" for port in server.ports]

        async def run() -> None:
            client = overhead.make_client(args.client, base_urls)
            call = client.call(args.mode)
            try:
                await overhead.drive(call, 300, args.concurrency)
                profiler.enable()
                wall, latencies, errors = await overhead.drive(call, args.requests, args.concurrency)
                profiler.disable()
            finally:
                await client.aclose()
            print(
                f"{args.client} {args.mode} c={args.concurrency}: {len(latencies) / wall:,.0f} req/s under "
                f"cProfile, {errors} errors"
            )

        asyncio.run(run())

    if args.output:
        profiler.dump_stats(args.output)
    stats = pstats.Stats(profiler)
    n = args.requests
    rows = []
    for (file, line, func), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{func} ({overhead_short(file)}:{line})"
        rows.append((own, cumulative, calls, name, any(o in file for o in OURS)))
    total = sum(r[0] for r in rows)
    print(f"\nprofiled CPU {total / n * 1e6:,.0f} µs per request (cProfile-inflated)")
    print(f"\nOwn time, top {args.top}:   µs/req  calls/req")
    for own, _cum, calls, name, _ in sorted(rows, reverse=True)[: args.top]:
        print(f"  {own / n * 1e6:8.1f} {calls / n:9.1f}  {name}")
    print("\nProject functions by cumulative time:   µs/req  calls/req")
    for _own, cum, calls, name, ours in sorted(rows, key=lambda r: -r[1]):
        if ours and cum / n * 1e6 >= 1.0:
            print(f"  {cum / n * 1e6:8.1f} {calls / n:9.1f}  {name}")
    return 0


def overhead_short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "lib/python3" in path:
        return "stdlib/" + path.split("lib/python3", 1)[1].split("/", 1)[-1]
    return path


if __name__ == "__main__":
    sys.exit(main())
