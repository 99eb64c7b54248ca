"""Summarise a py-spy profile (collapsed stacks) of a benchmark run: where the client's time goes.

    py-spy record --format raw -r 997 -o /tmp/router.txt -- \\
        python bench/overhead.py --clients router --modes stream --concurrency 64 --requests 6000 --no-imports
    python bench/hotspots.py /tmp/router.txt [--top 25]

Prints, as a share of all samples of the client process:
* by package (the innermost frame's package: what actually burns the CPU);
* self time by function (innermost frame);
* inclusive time of the project's own functions (router/, providers/, policies/), with the line;
* "charged to": each sample is charged to the innermost project frame on its stack, so library
  time (pydantic, httpx2, anyio, ...) shows up against the project line that called into it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OURS = ("router/", "providers/", "policies/")
HARNESS = ("bench/",)


def package_of(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            if marker == "lib/python3":
                return "stdlib:" + rest.split("/")[1].removesuffix(".py") if "/" in rest else "stdlib"
            return rest.split("/")[0].removesuffix(".py")
    for ours in OURS + HARNESS:
        if f"/{ours}" in path or path.startswith(ours):
            return ours.rstrip("/")
    return path or "?"


def short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "lib/python3" in path:
        return "stdlib/" + path.split("lib/python3", 1)[1].split("/", 1)[-1]
    return path


def is_ours(path: str) -> bool:
    return package_of(path) in {o.rstrip("/") for o in OURS}


def parse(path: Path) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        stack, _, count = raw.rpartition(" ")
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part.strip())
            if m:
                frames.append((m["func"], m["file"], m["line"] or ""))
            else:
                frames.append((part.strip(), "", ""))
        stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = parse(args.profile)
    total = sum(c for _, c in stacks)
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    charged: Counter[str] = Counter()
    for frames, count in stacks:
        # py-spy writes the thread/process first, then outermost → innermost frames
        real = [f for f in frames if f[1]]
        if not real:
            continue
        func, file, _line = real[-1]
        by_package[package_of(file)] += count
        self_time[f"{func} ({short(file)})"] += count
        seen = set()
        for func_, file_, _ in real:
            if is_ours(file_):
                key = f"{func_} ({short(file_)})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count
        ours = [f for f in real if is_ours(f[1])]
        if ours:
            func_, file_, line_ = ours[-1]
            charged[f"{short(file_)}:{line_} {func_} → {package_of(file)}"] += count
        else:
            charged[f"(no project frame) → {package_of(file)}"] += count

    def show(title: str, counter: Counter[str], top: int) -> None:
        print(f"\n{title}")
        for key, count in counter.most_common(top):
            print(f"  {100 * count / total:5.1f}%  {key}")

    print(f"{total} samples")
    show("By package (innermost frame):", by_package, 20)
    show("Self time by function:", self_time, args.top)
    show("Inclusive time of project functions (router/, providers/, policies/):", inclusive, args.top)
    show("Charged to the innermost project line (→ package that ran):", charged, args.top)


if __name__ == "__main__":
    main()
