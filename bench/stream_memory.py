"""Memory per concurrent stream: RSS growth while N streams are open at once, per client.

    python bench/stream_memory.py [--streams 1000] [--clients "raw aiohttp,openai,router"]

Each client runs in its own Python process (so one's heap does not hide another's) against the
fast loopback server (`bench/fake_server.py`): it opens `--streams` streamed chat calls at once,
reads the first chunk of each (every stream is then open, its response arrived and buffered),
and reports the process's resident memory growth over its state after a warm-up call, then the
growth left after closing them all. Not a test; the figure is for "RSS per 1,000 concurrent
streams" in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)] + [str(HERE)]

import fake_server  # noqa: E402
import overhead  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _open_raw(client: Any) -> Any:
    response = await client._open().post(client._url, data=client._body(True, overhead.LONG), headers=client._headers)
    await response.content.readline()
    return response


async def _open_sdk(client: Any) -> Any:
    stream = await client._create(
        model=client._model, messages=overhead.MESSAGES, max_tokens=overhead.LONG, stream=True
    )
    await stream.__anext__()
    return stream


async def measure(name: str, base_urls: list[str], streams: int) -> dict[str, float]:
    client = overhead.make_client(name, base_urls)
    opener = _open_raw if name == "raw aiohttp" else _open_sdk
    first = await opener(client)  # warm: imports, pools, caches
    await (first.close() if name != "raw aiohttp" else asyncio.sleep(0))
    if name == "raw aiohttp":
        first.close()
    gc.collect()
    before = rss_mb()
    opened = await asyncio.gather(*(opener(client) for _ in range(streams)))
    gc.collect()
    held = rss_mb()
    for stream in opened:
        if name == "raw aiohttp":
            stream.close()
        else:
            await stream.close()
    del opened
    gc.collect()
    after = rss_mb()
    await client.aclose()
    return {"open_mb": held - before, "left_mb": after - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--clients", type=lambda s: [c.strip() for c in s.split(",")], default=["raw aiohttp", "openai", "router"]
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--urls", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(args.one, args.urls.split(","), args.streams))))
        return 0
    with fake_server.server_process(ports=3) as server:
        urls = ",".join(f"http://127.0.0.1:{port}/v1" for port in server.ports)
        print(f"{args.streams} streams open at once (each {overhead.LONG} chunks, first chunk read); RSS growth")
        for name in args.clients:
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--one", name, "--urls", urls, "--streams", str(args.streams)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            result = json.loads(out)
            print(f"  {name:12} open: +{result['open_mb']:6.1f} MB   after closing: +{result['left_mb']:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
