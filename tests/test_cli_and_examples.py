"""The README's first command and the examples: they must run, offline, and say what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main
from tests.conftest import require_local_extra

ROOT = Path(__file__).resolve().parents[1]


def test_demo_routes_around_killed_backends(capsys: pytest.CaptureFixture[str]) -> None:
    require_local_extra()
    assert main(["demo", "--requests", "6", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    served = [row["route"]["backend"] for row in rows]
    assert len(rows) == 6 and all(row["route"]["complete"] for row in rows)
    assert served == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]  # alpha dies at 3, beta at 5
    assert rows[-1]["route"]["fallback"] == "tiny-backup"
    last = rows[-1]["route"]
    assert [(a["backend"], a["outcome"]) for a in last["attempts"]] == [("beta", "connection"), ("gamma", "ok")]
    # alpha failed twice in a row (circuit: failures 2 in demo.yaml), so it is no longer even tried
    assert [e["candidate"] for e in last["excluded"]] == ["alpha/tiny-llama"]
    assert last["excluded"][0]["reason"].startswith("circuit open")
    assert rows[1]["route"]["ttft_s"] is not None  # the even requests stream


def test_demo_table_says_the_text_is_noise() -> None:
    require_local_extra()
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "demo", "--requests", "3"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "random-weight" in out and "The text is noise; the routing is real." in out
    assert "3 requests, all answered" in out


def test_check_reports_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: {a: {provider: nope}}\nmodels:\n  m: {deployments: [{backend: b, model: x}]}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}:1: backends.a.provider: unknown provider 'nope'; known: deepseek, groq, cerebras, vllm, llamacpp, openai",
        f"{bad}:3: models.m.deployments[0].backend: unknown backend 'b'; known: a",
    ]
    assert main(["check", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "examples" / "router.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "backends": ["groq", "cerebras", "deepseek", "gpu-box", "laptop", "gateway"],
        "models": ["gpt-oss-120b", "gpt-oss-120b-cheap", "deepseek-flash", "local", "gpt"],
    }


@pytest.mark.parametrize("example", ["quickstart.py", "sync_client.py", "streaming.py"])
def test_examples_run_offline(example: str) -> None:
    require_local_extra()
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT / "examples",
    )
    assert result.returncode == 0, result.stderr
    assert "local → laptop/tiny-llama" in result.stdout
