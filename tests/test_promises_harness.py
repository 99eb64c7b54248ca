"""The suite's own promises: skips say why and how to fix them (and fail in CI), and the key grep
reaches the child processes tests start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from tests.conftest import CHILD_LOGS_VAR, CHILD_SITE, child_logs, leaked

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_reports_every_skip_with_its_reason() -> None:
    """The pytest options report skips (`-r` with `s`, or `a`), so a run without a server says so at its end."""
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    reports = "".join(option[2:] for option in addopts.split() if option.startswith("-r"))
    assert "s" in reports or "a" in reports


def _run_redis_test(tmp_path: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_redis.py"
    test.write_text(
        textwrap.dedent("""
        from tests.redis_server import redis_fixture
        redis_server = redis_fixture()
        def test_needs_redis(redis_server):
            pass
        """)
    )
    empty = tmp_path / "bin"  # a PATH without redis-server
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(empty)
    env["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE), str(ROOT)])
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def test_a_missing_redis_server_is_a_reported_skip_and_a_failure_in_ci(tmp_path: Path) -> None:
    """Without redis-server the test skips, naming it and how to install it; with `CI` set it fails."""
    skipped = _run_redis_test(tmp_path, ci=False)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "SKIPPED" in skipped.stdout and "redis-server is not on PATH: apt-get install redis-server" in skipped.stdout
    failed = _run_redis_test(tmp_path, ci=True)
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert "apt-get install redis-server (CI is set, so this is a failure, not a skip)" in failed.stdout


def test_every_skip_reason_in_the_suite_says_how_to_install_what_is_missing() -> None:
    """Each `unavailable(...)` call (skip outside CI) names what to install."""
    calls = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("unavailable(") or (" unavailable(" in stripped and "def " not in stripped):
                calls.append((path.name, line.strip()))
    assert len(calls) >= 5
    for name, line in calls:
        assert "install" in line, f"{name}: a skip that does not say how to install what is missing: {line}"


CHILD = textwrap.dedent("""
    import logging, sys
    from router import AsyncRouter
    key = sys.argv[1]
    AsyncRouter.from_config({"backends": {"a": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                 "api_key": key}},
                             "models": {"m": {"deployments": [{"backend": "a", "model": "m"}]}},
                             "telemetry": {"otel": "off"}})
    logging.getLogger("router").warning("redacted by the router: %s", key)
    if sys.argv[2] == "leak":
        logging.getLogger("some.app").warning("an application logging the key %s", key)
""")


def test_a_key_in_a_child_process_log_is_caught(tmp_path: Path) -> None:
    """A child started by a test writes its log lines and keys where the session's key grep reads them."""
    assert str(CHILD_SITE) in os.environ["PYTHONPATH"].split(os.pathsep)  # every child inherits it
    key = "sk-child-harness-test-key"
    for mode in ("clean", "leak"):
        folder = tmp_path / mode
        folder.mkdir()
        env = dict(os.environ, **{CHILD_LOGS_VAR: str(folder)})
        subprocess.run([sys.executable, "-c", CHILD, key, mode], env=env, check=True, timeout=60, cwd=ROOT)
        text, keys = child_logs(folder)
        assert key in keys, "the child's configured key was not reported"
        assert "redacted by the router: [redacted]" in text
        assert leaked(keys, text) == ([key[:4] + "…"] if mode == "leak" else [])
