"""The `inference-router` command line: every command's text and `--json` output, and its exit codes.

Commands run in-process through `main(argv)` (capsys captures stdout and stderr) against real
loopback backends from `tests/fault_server.py`; nothing reaches the internet. Exit codes: 0 ok,
1 config (or usage file) problem, 2 bad usage, 3 the call failed.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from providers import Usage
from router.cli import main
from router.observe.usage import UsageLedger
from router.path.events import CallInfo
from router.path.record import Attempt, RouteRecord
from tests.fault_server import FaultServer, cut_after, ok, silent, status

TEXT = "alpha beta gamma"
COMMANDS = ("chat", "explain", "health", "usage", "check", "demo")


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    """`good` answers TEXT (5 prompt + 3 completion tokens); `broken` answers 500; `cut` breaks mid-stream."""
    with FaultServer(max_hold_s=5.0, good=ok(TEXT, usage=(5, 3)), broken=status(500), cut=cut_after(2, TEXT)) as fault:
        yield fault


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, server: FaultServer | None = None, **extra: Any) -> str:
    """A config with alias `m`: `broken/x` first, then `good/y` (priced), plus `dead` on a closed port and `cut`."""
    backends: dict[str, Any] = {"dead": {"provider": "vllm", "base_url": f"http://127.0.0.1:{closed_port()}/v1"}}
    if server is not None:
        backends |= {
            "good": {"provider": "openai", "base_url": server.base_url("good"), "api_key": "k"},
            "broken": {"provider": "vllm", "base_url": server.base_url("broken")},
            "cut": {"provider": "openai", "base_url": server.base_url("cut"), "api_key": "k"},
        }
    config = {
        "backends": backends,
        "models": {
            "m": {
                "deployments": [
                    {"backend": "broken", "model": "x"},
                    {"backend": "good", "model": "y", "price": {"input_per_mtok": 1, "output_per_mtok": 2}},
                ]
            },
            "gone": {"deployments": [{"backend": "dead", "model": "z"}]},
            "flaky": {"deployments": [{"backend": "cut", "model": "w"}]},
        }
        if server is not None
        else {"gone": {"deployments": [{"backend": "dead", "model": "z"}]}},
        "retry": {"attempts_per_deployment": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
        "timeouts": {"connect_s": 1, "first_token_s": 3, "stall_s": 3, "total_s": 10},
        "load_probes": {"enabled": False, "timeout_s": 0.3},
        **extra,
    }
    path = folder / "router.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return str(path)


BAD_CONFIG = """\
backends:
  a: {provider: nope}
models:
  m:
    deployments: [{backend: b, model: x}]
"""


@pytest.fixture
def bad_config(tmp_path: Path) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    return str(path)


# --- help and start-up ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_a_description_and_examples(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:\n  inference-router " + (command or "") in out
    assert "--json" in out or command is None


def test_console_script_starts_without_heavy_imports() -> None:
    """`inference-router --help` imports neither openai nor rich nor pydantic (it must start fast)."""
    code = (
        "import sys; from router.cli import main; code = main(['--help']); "
        "heavy = [m for m in ('openai', 'rich', 'pydantic', 'httpx2') if m in sys.modules]; "
        "print('heavy:', heavy, file=sys.stderr); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "chat" in result.stdout
    assert "heavy: []" in result.stderr
    script = Path(sys.executable).with_name("inference-router")
    if script.exists():  # the installed console script (`router.cli:run`)
        result = subprocess.run([str(script), "check", "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "examples:" in result.stdout


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat"]) == 2
    assert main(["nope"]) == 2
    assert main(["usage", "--since", "3 fortnights"]) == 2
    assert "cannot read '3 fortnights' as a duration" in capsys.readouterr().err
    assert main(["usage", "--by", "backend,colour"]) == 2
    assert "unknown key colour" in capsys.readouterr().err


# --- chat ----------------------------------------------------------------------------------


class ChunkRecorder(io.StringIO):
    """A stdout that remembers each write and flush, to see that the answer is streamed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def test_chat_streams_the_answer_then_one_route_line(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, server)
    stdout = ChunkRecorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["chat", config, "-m", "m", "Say hi", "--tag", "cli-test"]) == 0
    assert stdout.getvalue() == TEXT + "\n"
    assert stdout.writes[:3] == ["alpha", " beta", " gamma"] and stdout.flushes >= 3  # one write + flush a chunk
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("m → good/y in ")
    assert "[broken/x server_error" in line and "good/y ok" in line  # the attempts, from RouteRecord.summary()
    assert "· ttft " in line and "· 5+3 tokens" in line and "· $0.000011" in line and "· tags cli-test" in line


def test_chat_sends_system_stdin_and_parameters(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, server)
    monkeypatch.setattr(sys, "stdin", io.StringIO("the prompt from stdin"))
    argv = ["chat", config, "-m", "y", "-", "--system", "Be brief.", "--max-tokens", "7", "--temperature", "0.5"]
    assert main([*argv, "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert out == TEXT + "\n" and "y → good/y" in err
    body = server.requests("good")[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the prompt from stdin"},
    ]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and not body.get("stream")


def test_chat_json_prints_the_content_and_the_route(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, server)
    assert main(["chat", config, "-m", "m", "Say hi", "--json", "--tag", "a", "--policy", "cheapest"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert err == ""
    assert data["content"] == TEXT and data["finish_reason"] == "stop"
    route = data["route"]
    assert route["backend"] == "good" and route["policy"] == "cheapest" and route["tags"] == ["a"]
    assert route["usage"]["prompt_tokens"] == 5 and route["cost_usd"] == pytest.approx(1.1e-05)
    assert "rule" in route and route["complete"] is True


def test_chat_against_a_dead_backend_exits_3_with_the_attempts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["chat", config, "-m", "gone", "hi"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: APIConnectionError: ")
    assert lines[1].startswith("  attempt 1: dead/z connection ")

    assert main(["chat", config, "-m", "gone", "hi", "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["error"]["type"] == "APIConnectionError"
    assert [(a["backend"], a["outcome"]) for a in data["error"]["attempts"]] == [("dead", "connection")]
    assert data["route"]["backend"] is None and data["route"]["attempts"][0]["backend"] == "dead"


def test_chat_stream_broken_midway_keeps_the_partial_text_and_exits_3(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, server)
    assert main(["chat", config, "-m", "flaky", "hi"]) == 3
    out, err = capsys.readouterr()
    assert out == "alpha beta\n"  # what arrived, ended with a newline
    assert err.startswith("error: StreamInterruptedError: ")
    assert "attempt 1: cut/w " in err


def test_chat_unknown_model_exits_3_listing_the_known_ones(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, server)
    assert main(["chat", config, "-m", "nope", "hi"]) == 3
    err = capsys.readouterr().err
    assert "UnknownModelError" in err and "known models: flaky, gone, m" in err
    assert main(["chat", config, "-m", "nope", "hi", "--json"]) == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "UnknownModelError" and error["status_code"] == 404


def test_chat_bad_hint_exits_2_and_bad_config_exits_1(
    tmp_path: Path, bad_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["chat", config, "-m", "gone", "hi", "--policy", "random-walk"]) == 2
    assert "unknown policy 'random-walk'; known: " in capsys.readouterr().err
    assert main(["chat", bad_config, "-m", "m", "hi"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad_config}:2: backends.a.provider: unknown provider 'nope'")
    assert err[1].startswith(f"{bad_config}:5: models.m.deployments[0].backend: unknown backend 'b'")
    assert main(["chat", bad_config, "-m", "m", "hi", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "ConfigError" and [i["line"] for i in error["issues"]] == [2, 5]


# --- check ---------------------------------------------------------------------------------


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["check", config]) == 0
    assert capsys.readouterr().out == f"{config}: ok (1 backends, 1 models)\n"
    assert main(["check", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "backends": ["dead"], "models": ["gone"]}


def test_check_lists_every_error_as_file_line_and_exits_1(bad_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", bad_config]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad_config}:2: backends.a.provider: unknown provider 'nope'; known: deepseek, groq, cerebras, vllm, llamacpp, openai",
        f"{bad_config}:5: models.m.deployments[0].backend: unknown backend 'b'; known: a",
    ]
    assert main(["check", bad_config, "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {
        "ok": False,
        "errors": [
            {
                "file": bad_config,
                "line": 2,
                "path": "backends.a.provider",
                "message": "unknown provider 'nope'; known: deepseek, groq, cerebras, vllm, llamacpp, openai",
            },
            {
                "file": bad_config,
                "line": 5,
                "path": "models.m.deployments[0].backend",
                "message": "unknown backend 'b'; known: a",
            },
        ],
    }


def test_check_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nowhere.yaml")
    assert main(["check", missing]) == 1
    assert capsys.readouterr().err.startswith(f"{missing}: cannot read the file")


# --- explain and health --------------------------------------------------------------------


def test_explain_shows_the_rule_the_ranking_and_the_exclusions(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, server)
    assert main(["explain", config, "-m", "m", "--prompt", "hello", "--tag", "t", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "rule" in data and data["tags"] == ["t"]
    assert [(line["rank"], line["candidate"]) for line in data["ranking"]] == [(1, "broken/x"), (2, "good/y")]
    assert data["ranking"][1]["expected_cost_usd"] > 0
    assert main(["explain", config, "-m", "m", "--policy", "cheapest", "--max-tokens", "100000"]) == 0
    out = capsys.readouterr().out
    assert "m: policy cheapest · rule " in out and "good/y" in out
    assert main(["explain", config, "-m", "nope", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "UnknownModelError"


def test_explain_sends_nothing(server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, server)
    before = {name: server.count(name) for name in server.names}
    assert main(["explain", config, "-m", "m"]) == 0
    assert {name: server.count(name) for name in server.names} == before
    assert "rule none" in capsys.readouterr().out


def test_health_table_and_json(server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, server)
    assert main(["health", config, "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {row["deployment"]: row for row in json.loads(out)}
    assert err == ""  # no spinner when stderr is not a terminal
    assert set(rows) == {"broken/x", "good/y", "dead/z", "cut/w"}
    assert all(row["state"] == "closed" for row in rows.values())
    assert main(["health", config]) == 0
    out = capsys.readouterr().out
    assert "deployments" in out and "circuit" in out and "headroom" in out and "good/y" in out


# --- usage ---------------------------------------------------------------------------------


def _record(
    backend: str, tags: list[str], tokens: tuple[int, int], cost: float, *, failed_first: bool = False
) -> RouteRecord:
    attempts = [Attempt(backend, "openai", "y", "ok", 0.1)]
    if failed_first:
        attempts.insert(0, Attempt("broken", "vllm", "x", "server_error", 0.05, status_code=500))
    return RouteRecord(
        requested_model="m",
        alias="m",
        policy="ordered",
        stream=False,
        tags=tags,
        backend=backend,
        provider="openai",
        model="y",
        attempts=attempts,
        usage=Usage(prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=sum(tokens)),
        cost_usd=cost,
        complete=True,
    )


@pytest.fixture
def usage_db(tmp_path: Path) -> Path:
    """A usage file with three calls now (two tagged `batch`, one falling over from `broken`) and one 2 days ago."""
    path = tmp_path / "usage.sqlite"

    async def write(records: list[RouteRecord], at: float) -> None:
        ledger = UsageLedger(path, clock=lambda: at)
        for record in records:
            ledger.call_succeeded(CallInfo(record=record, request={}))
        await ledger.aclose()

    now = time.time()
    anyio.run(write, [_record("good", [], (1000, 10), 0.5)], now - 2 * 86400)
    recent = [
        _record("good", ["batch"], (10, 20), 0.000123),
        _record("good", ["batch", "nightly"], (30, 40), 0.000077, failed_first=True),
        _record("other", [], (5, 5), 0.0),
    ]
    anyio.run(write, recent, now)
    return path


def test_usage_table_with_totals(usage_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--db", str(usage_db), "--by", "backend"]) == 0
    out = capsys.readouterr().out
    assert "usage, all recorded" in out
    for heading in ("backend", "requests", "attempts", "errors", "failures", "tokens in", "tokens out", "cached in"):
        assert heading in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert set(lines) == {"good", "broken", "other", "total"}
    assert "0.500200" in lines["good"] and "0.000000" in lines["other"]
    assert "1,040" in lines["good"]  # tokens in: 1000 + 10 + 30
    assert "0.500200" in lines["total"] and "1,045" in lines["total"]


def test_usage_json_since_and_by_tag(usage_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--db", str(usage_db), "--since", "1d", "--by", "backend,tag", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["since_s"] == 86400 and data["group_by"] == ["backend", "tag"]
    rows = {(row["backend"], row["tag"]): row for row in data["rows"]}
    assert set(rows) == {
        ("good", "batch"),
        ("good", "nightly"),
        ("broken", "nightly"),
        ("broken", "batch"),
        ("other", ""),
    }
    assert rows[("good", "batch")]["requests"] == 2 and rows[("good", "nightly")]["requests"] == 1
    assert rows[("broken", "batch")]["errors"] == 1 and rows[("broken", "batch")]["requests"] == 0
    assert all(row["model"] is None for row in data["rows"])  # not grouped by model
    total = data["total"]
    assert total["requests"] == 3  # each call once, although the two-tag call is in two tag rows
    assert total["prompt_tokens"] == 45 and total["attempts"] == 4 and total["errors"] == 1
    assert total["cost_usd"] == pytest.approx(0.0002)

    assert main(["usage", "--db", str(usage_db), "--json"]) == 0  # everything: the old call too
    data = json.loads(capsys.readouterr().out)
    assert data["since_s"] is None and data["total"]["requests"] == 4 and data["total"]["prompt_tokens"] == 1045
    assert main(["usage", "--db", str(usage_db), "--since", "90s", "--by", "tag"]) == 0
    out = capsys.readouterr().out
    assert "usage, last 90s" in out and "(untagged)" in out and "counts under each of them" in out


def test_usage_path_from_the_config(usage_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, usage={"path": str(usage_db)})
    assert main(["usage", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["db"] == str(usage_db)


def test_usage_without_a_file_exits_1(tmp_path: Path, bad_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage"]) == 1
    err = capsys.readouterr().err
    assert "--db PATH" in err and "usage.path" in err
    assert main(["usage", write_config(tmp_path)]) == 1
    assert "usage.path is not set" in capsys.readouterr().err
    missing = tmp_path / "none.sqlite"
    assert main(["usage", "--db", str(missing)]) == 1
    assert f"no usage file at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # reading never creates it
    assert main(["usage", "--db", str(missing), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "FileNotFoundError"
    not_usage = tmp_path / "other.sqlite"
    not_usage.write_bytes(b"not a database at all, just text" * 10)
    assert main(["usage", "--db", str(not_usage)]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["usage", bad_config]) == 1
    assert f"{bad_config}:2:" in capsys.readouterr().err


def test_usage_empty_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.sqlite"

    async def write() -> None:
        ledger = UsageLedger(path, clock=lambda: time.time() - 10 * 86400)
        ledger.call_succeeded(CallInfo(record=_record("good", [], (1, 1), 0.1), request={}))
        await ledger.aclose()

    anyio.run(write)
    assert main(["usage", "--db", str(path), "--since", "1w", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == [] and data["total"]["requests"] == 0 and data["total"]["cost_usd"] == 0
    assert main(["usage", "--db", str(path), "--since", "1w"]) == 0
    out = capsys.readouterr().out
    assert "usage, last 1w" in out and "no calls recorded in the last 1w" in out


def test_usage_of_real_calls(server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`chat` through a router whose config sets usage.path, then `usage` reads what it recorded."""
    config = write_config(tmp_path, server, usage={"path": str(tmp_path / "ledger" / "usage.sqlite")})
    assert main(["chat", config, "-m", "m", "one", "--tag", "e2e"]) == 0
    assert main(["chat", config, "-m", "m", "two", "--no-stream"]) == 0
    assert main(["chat", config, "-m", "gone", "three", "--tag", "e2e"]) == 3
    capsys.readouterr()
    assert main(["usage", config, "--since", "1h", "--by", "backend,tag", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {(row["backend"], row["tag"]): row for row in data["rows"]}
    assert rows[("good", "e2e")]["requests"] == 1 and rows[("good", "")]["requests"] == 1
    assert rows[("good", "e2e")]["prompt_tokens"] == 5 and rows[("good", "e2e")]["cost_usd"] == pytest.approx(1.1e-05)
    assert rows[("broken", "e2e")]["errors"] == 1 and rows[("broken", "e2e")]["requests"] == 0
    assert rows[("dead", "e2e")]["failures"] == 1
    assert data["total"]["requests"] == 3 and data["total"]["failures"] == 1
    assert main(["usage", config]) == 0
    assert "good" in capsys.readouterr().out


def test_the_matched_rule_is_shown_by_explain_and_chat(
    server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = {"name": "batch-cheap", "match": {"tags": ["batch"]}, "set": {"policy": "cheapest", "only": ["good"]}}
    config = write_config(tmp_path, server, rules=[rule])
    assert main(["explain", config, "-m", "m", "--tag", "batch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rule"] == "batch-cheap" and data["policy"] == "cheapest"
    assert [line["candidate"] for line in data["ranking"]] == ["good/y"]
    assert [e["candidate"] for e in data["excluded"]] == ["broken/x"]
    assert main(["explain", config, "-m", "m", "--tag", "batch"]) == 0
    out = capsys.readouterr().out
    assert "m: policy cheapest · rule batch-cheap · tags batch" in out and "excluded broken/x: " in out
    assert main(["chat", config, "-m", "m", "hi", "--tag", "batch"]) == 0
    assert "· rule batch-cheap" in capsys.readouterr().err


# --- exit codes the README promises: --deadline, Ctrl-C (130), demo without the local extra (1) ---


def test_chat_deadline_bounds_the_whole_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`chat --deadline 0.5`: two silent backends cost half a second, not their 3 s first-token deadlines."""
    with FaultServer(max_hold_s=5.0, good=silent(), broken=silent(), cut=silent()) as quiet:
        config = write_config(tmp_path, quiet)
        started = time.monotonic()
        assert main(["chat", config, "-m", "m", "hi", "--deadline", "0.5", "--no-stream"]) == 3
        took = time.monotonic() - started
    assert took < 2.0, f"took {took:.1f}s"
    assert capsys.readouterr().err.startswith("error: APITimeoutError: ")


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    """SIGINT while `chat` waits on a backend: the process says so and exits 130."""
    with FaultServer(max_hold_s=10.0, good=silent(), broken=silent(), cut=silent()) as quiet:
        config = write_config(tmp_path, quiet)
        process = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "chat", config, "-m", "m", "hi"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while quiet.count("broken") == 0:  # the call is under way
                assert time.monotonic() < deadline and process.poll() is None, process.communicate()
                time.sleep(0.02)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, (process.returncode, err)
    assert "interrupted" in err and "Traceback" not in err


BLOCK_LOCAL = (
    "import sys; sys.modules.update(xllamacpp=None, gguf=None, numpy=None); "  # as if the extra were not installed
    "from router.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_demo_without_the_local_extra_exits_1_saying_how_to_install_it() -> None:
    """`demo` without xllamacpp/gguf/numpy: exit 1 and the install command, as text and as JSON."""
    text = subprocess.run(
        [sys.executable, "-c", BLOCK_LOCAL, "demo", "--requests", "1"], capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 1, text.stderr
    assert "pip install 'inference-router[local]'" in text.stderr and "Traceback" not in text.stderr
    as_json = subprocess.run(
        [sys.executable, "-c", BLOCK_LOCAL, "demo", "--requests", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "ModuleNotFoundError" and "inference-router[local]" in error["message"]
