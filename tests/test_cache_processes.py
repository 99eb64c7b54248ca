"""The response cache through the router, shared by processes: SQLite on one machine, Redis anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fault_server import FaultServer, ok
from tests.redis_server import RedisServer, redis_fixture

ROOT = Path(__file__).resolve().parents[1]
redis_server = redis_fixture()

CALLER = textwrap.dedent("""
    import json, sys, anyio
    from router import AsyncRouter, route_of
    config, calls = json.loads(sys.argv[1]), int(sys.argv[2])
    async def main():
        async with AsyncRouter.from_config(config) as router:
            out = []
            async def one():
                reply = await router.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                             temperature=0)
                out.append([reply.choices[0].message.content, route_of(reply).cached])
            async with anyio.create_task_group() as group:
                for _ in range(calls):
                    group.start_soon(one)
        print(json.dumps(out))
    anyio.run(main)
""")


def run(config: dict[str, Any], processes: int, calls: int) -> list[list[Any]]:
    running = [
        subprocess.Popen(
            [sys.executable, "-c", CALLER, json.dumps(config), str(calls)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    answers = []
    for process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        answers += json.loads(out)
    return answers


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_processes_share_one_cache_and_one_upstream_call(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        cache["path"] = str(tmp_path / "cache.sqlite3")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        cache["url"] = server.url
    with FaultServer(a=ok("the answer", ttft=0.5)) as fault:
        config = {
            "backends": {
                "a": {"provider": "openai", "base_url": fault.base_url("a"), "api_key": "sk-cache-child-test-key"}
            },
            "models": {"m": {"deployments": [{"backend": "a", "model": "m"}]}},
            "cache": cache,
        }
        concurrent = run(config, processes=3, calls=3)  # single-flight across processes through the store's lock
        later = run(config, processes=1, calls=1)
        upstream = fault.count("a")
    assert [text for text, _ in concurrent + later] == ["the answer"] * 10
    assert upstream == 1, f"{upstream} upstream calls for 10 identical requests in 4 processes"
    assert later[0][1] is True and sum(cached for _, cached in concurrent) == 8
