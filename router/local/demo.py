"""`inference-router demo`: real routing across real llama.cpp servers, with no keys and no network.

Three llama.cpp servers start on loopback, serving tiny random-weight models generated on the
spot. Requests go through `examples/demo.yaml`; midway, backends are killed and the router
falls over. The text is noise (the weights are random); the routing, retries and timings are real.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.path.record import RouteRecord

_PACKAGED = Path(__file__).parent / "demo.yaml"
_IN_REPO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def demo_config_path() -> Path:
    """The demo config: the repo's `examples/demo.yaml`, or the copy packed into the wheel."""
    return _IN_REPO if _IN_REPO.exists() else _PACKAGED


@dataclass
class _Row:
    number: int
    mode: str
    event: str
    record: RouteRecord
    text: str


def _attempts(record: RouteRecord) -> str:
    skipped = [
        f"{e.candidate.split('/')[0]} [yellow]⊘[/] circuit open"
        for e in record.excluded
        if e.reason.startswith("circuit")
    ]
    tried = [
        f"{a.backend} [green]✓[/]" if a.outcome == "ok" else f"{a.backend} [red]✗[/] {a.outcome}"
        for a in record.attempts
    ]
    return " → ".join(skipped + tried)


def _progress(console: Console | None) -> Progress:
    """A transient bar of requests sent on the stderr console; disabled (silent) without one."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=console is None,
    )


async def _run(requests: int, progress: Console | None) -> list[_Row]:
    """Start the servers, send the requests (killing servers midway), stop the servers.

    `progress`: a stderr console for the spinner and bar (None when stderr is not a terminal or
    the output is JSON), so stdout carries only the result.
    """
    from router.client import AsyncRouter
    from router.local.llamacpp_server import LlamaCppServer
    from router.local.tiny_gguf import write_tiny_gguf
    from router.path.record import route_of

    rows: list[_Row] = []
    servers: dict[str, LlamaCppServer] = {}
    with tempfile.TemporaryDirectory(prefix="inference-router-demo-") as folder:
        work = Path(folder)
        starting = progress.status("generating tiny models and starting three llama.cpp servers…") if progress else None
        try:
            with starting or contextlib.nullcontext():
                models = [write_tiny_gguf(work / f"tiny-{seed}.gguf", seed=seed) for seed in (0, 1)]
                servers = {
                    "alpha": LlamaCppServer(models[0], log_path=work / "alpha.log"),
                    "beta": LlamaCppServer(models[0], log_path=work / "beta.log"),
                    "gamma": LlamaCppServer(models[1], log_path=work / "gamma.log"),
                }
                for server in servers.values():
                    server.start()  # a failure here still stops the ones already started (finally)
            env = {f"DEMO_{name.upper()}_URL": server.base_url for name, server in servers.items()}
            kills = {max(2, requests // 3 + 1): "alpha", max(3, 2 * requests // 3 + 1): "beta"}
            prompt: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about routing."}]
            async with AsyncRouter.from_config(demo_config_path(), env=env) as router:
                with _progress(progress) as bar:
                    task = bar.add_task("routing requests", total=requests)
                    for number in range(1, requests + 1):
                        event = ""
                        if number in kills:
                            servers[kills[number]].kill()
                            event = f"{kills[number]} killed"
                        stream = number % 2 == 0
                        if stream:
                            chunks = await router.chat.completions.create(
                                model="tiny-chat", messages=prompt, max_tokens=24, stream=True
                            )
                            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                            record = route_of(chunks)
                        else:
                            reply = await router.chat.completions.create(
                                model="tiny-chat", messages=prompt, max_tokens=24
                            )
                            text = reply.choices[0].message.content or ""
                            record = route_of(reply)
                        rows.append(_Row(number, "stream" if stream else "complete", event, record, text))
                        bar.update(task, advance=1, description=f"{event or 'routing requests'}")
        finally:
            for server in servers.values():
                server.stop()
    return rows


def run_demo(requests: int = 12, *, as_json: bool = False) -> int:
    """Run the demo and print what the router did; returns the process exit code."""
    console = Console()
    progress = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 110)
    if not as_json:
        console.print(
            "[bold]inference-router demo[/]: three real llama.cpp servers on loopback, serving tiny "
            "[bold yellow]random-weight[/] models. The text is noise; the routing is real.\n"
            f"Config: {demo_config_path()}  (alias tiny-chat → alpha, beta; fallback tiny-backup → gamma)",
            soft_wrap=True,
        )
    try:
        rows = anyio.run(_run, requests, progress if progress.is_terminal and not as_json else None)
    except ModuleNotFoundError as exc:
        message = f"the demo needs the `local` extra ({exc.name} is missing): pip install 'inference-router[local]'"
        if as_json:
            print(json.dumps({"error": {"type": "ModuleNotFoundError", "message": message}}))
        else:
            from rich.markup import escape  # "[local]" is not a style tag: print the command as it is

            progress.print(f"[red]{escape(message)}[/]", markup=True, highlight=False, soft_wrap=True)
        return 1
    if as_json:
        print(
            json.dumps(
                [
                    {"request": r.number, "mode": r.mode, "event": r.event, "text": r.text, "route": r.record.to_dict()}
                    for r in rows
                ],
                indent=2,
                default=str,
            )
        )
        return 0
    table = Table(title="Which backend answered each request")
    for column, justify in (
        ("#", "right"),
        ("mode", "left"),
        ("served by", "left"),
        ("attempts", "left"),
        ("latency", "right"),
        ("TTFT", "right"),
        ("text (noise)", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "attempts")  # type: ignore[arg-type]
    for row in rows:
        record = row.record
        if row.event:
            table.add_row("", "", f"[bold red]{row.event}[/]", "", "", "", "")
        served_by = str(record.backend)
        if record.fallback:
            served_by += f" (fallback {record.fallback})"
        table.add_row(
            str(row.number),
            row.mode,
            served_by,
            _attempts(record),
            f"{(record.latency_s or 0) * 1000:.1f} ms",
            f"{record.ttft_s * 1000:.1f} ms" if record.ttft_s is not None else "–",
            row.text[:12].replace("[", "\\["),
        )
    console.print(table)
    served: dict[str, int] = {}
    for row in rows:
        served[str(row.record.backend)] = served.get(str(row.record.backend), 0) + 1
    failed_over = sum(1 for row in rows if len(row.record.attempts) > 1)
    skipped = sum(1 for row in rows if any(e.reason.startswith("circuit") for e in row.record.excluded))
    console.print(
        f"{len(rows)} requests, all answered: "
        + ", ".join(f"{backend} {count}" for backend, count in served.items())
        + f"; {failed_over} fell over after a failed attempt; {skipped} skipped a dead backend without trying it"
        " (its circuit was open)."
    )
    return 0
