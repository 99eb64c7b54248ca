"""Mutation testing of the modules whose tests are fast, with mutmut 3 — a habit, not part of the suite.

    .venv/bin/pip install -e '.[mutation]'          # mutmut>=3.8,<4
    nice -n 10 .venv/bin/python bench/mutation.py                 # every module below
    nice -n 10 .venv/bin/python bench/mutation.py router/errors.py providers/sse.py
    .venv/bin/python bench/mutation.py --survivors router/errors.py   # list what survived last time

Each module is mutated on its own, in a scratch copy of the tree (`bench/.mutation/MODULE/`, never
the working tree), and each mutant is judged by only the module's fast tests (`TESTS` below;
mutmut further runs only the tests that reach the mutated function). The score per module is
killed ÷ (killed + survived + timeouts counted as killed), mutants no test reaches ("no tests")
count as survivors. `--sample N` keeps at most N mutants per module (evenly spread), for a
quick look on a busy machine. `policies/fastest.py` is being rewritten: it is left out unless
`--with-fastest` is given. Survivors and why they may stay: `bench/mutation_survivors.md`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".mutation"

# module → the fast test files that check it
TESTS: dict[str, list[str]] = {
    "policies/base.py": ["tests/test_policies.py"],
    "policies/cheapest.py": ["tests/test_policies.py", "tests/test_promises_policies.py"],
    "policies/estimates.py": [
        "tests/test_policies.py",
        "tests/test_stats_and_eligibility.py",
        "tests/test_promises_policies.py",
        "tests/test_policy_routing.py",
    ],
    "policies/least_loaded.py": ["tests/test_policies.py", "tests/test_promises_policies.py"],
    "policies/ordered.py": ["tests/test_policies.py"],
    "policies/weighted.py": ["tests/test_policies.py"],
    "policies/__init__.py": ["tests/test_policies.py"],
    "providers/errors.py": [
        "tests/test_providers.py",
        "tests/test_promises_errors.py",
        "tests/test_promises_ratelimits.py",
    ],
    "providers/sse.py": ["tests/test_providers.py", "tests/test_promises_sse.py"],
    "providers/ratelimits.py": ["tests/test_providers.py", "tests/test_promises_ratelimits.py"],
    "router/cache/keys.py": ["tests/test_cache.py"],
    "router/config/eligibility.py": [
        "tests/test_stats_and_eligibility.py",
        "tests/test_routing.py",
        "tests/test_promises_calls.py",
        "tests/test_promises_eligibility.py",
    ],
    "router/config/rules.py": [
        "tests/test_rules.py",
        "tests/test_promises_rules.py",
        "tests/test_promises_rule_matching.py",
    ],
    "router/path/circuit.py": ["tests/test_circuit.py", "tests/test_promises_circuit.py"],
    "router/errors.py": [
        "tests/test_providers.py",
        "tests/test_routing.py",
        "tests/test_promises_errors.py",
    ],
}
FASTEST = {"policies/fastest.py": ["tests/test_policies.py"]}

KILLED = {"killed", "timeout", "caught by type check"}


def _copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mutation", "mutants")
    for name in ("router", "providers", "policies", "tests", "examples"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("README.md",):
        shutil.copy2(ROOT / name, dest / name)


def _pyproject(module: str, tests: list[str]) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    quoted = ", ".join(f'"{t}"' for t in tests)
    return (
        text
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["router", "providers", "policies"]\n'
        + f'only_mutate = ["{module}"]\n'
        + 'also_copy = ["tests", "examples", "README.md"]\n'
        + f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        + 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
        + "use_git_change_detection = false\n"
    )


def _results(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


def run_module(module: str, tests: list[str], *, children: int, sample: int | None) -> dict[str, str]:
    workdir = WORK / module.replace("/", "_").removesuffix(".py")
    _copy_tree(workdir)
    (workdir / "pyproject.toml").write_text(_pyproject(module, [t for t in tests if (ROOT / t).exists()]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CI"] = "true"
    names: list[str] = []
    if sample:
        # generate once (a run restricted to a name that matches nothing), then pick evenly
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), "-"],
            cwd=workdir,
            env=env,
            capture_output=True,
            check=False,
        )
        every = sorted(_results(workdir, env))
        step = max(1, len(every) // sample)
        names = every[::step][:sample]
    for _ in range(2):  # a clean run that failed (a timing test on a busy machine) is tried once more
        with (workdir / "mutmut.log").open("w") as log:
            subprocess.run(
                [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        results = _results(workdir, env)
        if results:
            break
        print(f"    (no results for {module}; see {workdir / 'mutmut.log'})", flush=True)
    if names:
        results = {k: v for k, v in results.items() if k in set(names)}
    return results


def _diff(workdir: Path, name: str) -> list[str]:
    """The changed lines of one mutant (`-` original, `+` mutant)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "mutmut", "show", name]
    shown = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False).stdout
    return [line.strip() for line in shown.splitlines() if line[:1] in "+-" and line[:2] not in ("++", "--")]


def score(results: dict[str, str]) -> tuple[int, int, float]:
    tested = {k: v for k, v in results.items() if v not in {"skipped", "not checked"}}
    killed = sum(1 for v in tested.values() if v in KILLED)
    return killed, len(tested), (100.0 * killed / len(tested)) if tested else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of TESTS)")
    parser.add_argument("--with-fastest", action="store_true", help="also mutate policies/fastest.py")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--sample", type=int, help="at most this many mutants per module")
    parser.add_argument("--survivors", action="store_true", help="list the survivors of the last run, run nothing")
    parser.add_argument("--diffs", action="store_true", help="with each survivor, the line it changed")
    args = parser.parse_args()
    table = dict(TESTS, **(FASTEST if args.with_fastest else {}))
    modules = args.modules or list(table)
    for module in modules:
        if module not in table and module not in FASTEST:
            parser.error(f"unknown module {module}; known: {', '.join([*TESTS, *FASTEST])}")
    print(f"{'module':34} {'killed':>7} {'tested':>7} {'score':>7} {'seconds':>8}")
    for module in modules:
        workdir = WORK / module.replace("/", "_").removesuffix(".py")
        started = time.monotonic()
        if args.survivors:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            results = _results(workdir, env) if workdir.exists() else {}
        else:
            tests = table.get(module) or FASTEST[module]
            results = run_module(module, tests, children=args.children, sample=args.sample)
        killed, tested, pct = score(results)
        print(f"{module:34} {killed:7} {tested:7} {pct:6.1f}% {time.monotonic() - started:8.0f}", flush=True)
        for name, status in sorted(results.items()):
            if status not in KILLED | {"skipped", "not checked"}:
                print(f"    {status:10} {name}", flush=True)
                if args.diffs:
                    for line in _diff(workdir, name):
                        print(f"        {line}", flush=True)


if __name__ == "__main__":
    main()
