"""Background polling of self-hosted servers' load, so routing reads a recent value and never waits.

Each target gets its own task: a slow or dead server delays only its own probes. A target is
probed at most once per interval and never twice at once; one that stops answering is probed
less often (doubling up to `max_backoff`× the interval) until it answers again; then
`on_answer_again(name)` is told (the router takes it as evidence of health, see `circuit.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import httpx2

from providers.errors import ProviderError
from providers.load import LoadReporter, ServerLoad

__all__ = ["LoadPoller", "LoadSink"]

logger = logging.getLogger("router")

LoadSink = Callable[[str, ServerLoad | None], None]
"""Told `(name, load)` after each probe; `load` is None when the server did not answer."""

# A target's own timeout should end its probe; at this multiple of it the poller gives up anyway.
_BACKSTOP = 2.0


class LoadPoller:
    """Polls each target's `read_load` in the background and hands every result to `sink`."""

    def __init__(
        self,
        targets: Mapping[str, LoadReporter],
        client: httpx2.AsyncClient,
        sink: LoadSink,
        *,
        interval_s: float = 2.0,
        timeout_s: float = 1.0,
        max_backoff: float = 8.0,
        on_answer_again: Callable[[str], None] | None = None,
    ) -> None:
        """Poll `targets` (name → adapter) every `interval_s`; a probe may take `timeout_s` at most."""
        if interval_s <= 0 or timeout_s <= 0 or max_backoff < 1:
            raise ValueError("interval_s and timeout_s must be positive, max_backoff at least 1")
        self._targets = dict(targets)
        self._client = client
        self._sink = sink
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._max_backoff = max_backoff
        self._on_answer_again = on_answer_again

    async def run(self) -> None:
        """Poll every target until cancelled (run it in the router's task group)."""
        async with anyio.create_task_group() as tg:
            for name, target in self._targets.items():
                tg.start_soon(self._poll_forever, name, target, name=f"load poll {name}")
            if not self._targets:
                await anyio.sleep_forever()

    async def poll_once(self) -> None:
        """Probe every target once, concurrently, and deliver the results (for `health` on demand)."""

        async def one(name: str, target: LoadReporter) -> None:
            load, _ = await self._probe(name, target)
            self._deliver(name, load)

        async with anyio.create_task_group() as tg:
            for name, target in self._targets.items():
                tg.start_soon(one, name, target)

    async def _poll_forever(self, name: str, target: LoadReporter) -> None:
        """Probe one target forever: start-to-start every interval, backing off while it fails."""
        failures = 0
        next_at = anyio.current_time()
        while True:
            await anyio.sleep_until(next_at)
            started = anyio.current_time()
            load, error = await self._probe(name, target)
            self._deliver(name, load)
            if load is None:
                failures += 1
                if failures == 1:
                    logger.warning("load probe: %s is not answering: %s", name, error)
                else:
                    logger.debug("load probe: %s still not answering (%d): %s", name, failures, error)
            else:
                if failures:
                    logger.info("load probe: %s answers again after %d failed probes", name, failures)
                    self._answers_again(name)
                failures = 0
            delay = self._interval_s * min(2.0**failures, self._max_backoff)
            next_at = max(started + delay, anyio.current_time())

    async def _probe(self, name: str, target: LoadReporter) -> tuple[ServerLoad | None, str]:
        """One bounded `read_load`; a failure of any kind is (None, why), never an exception."""
        with anyio.move_on_after(self._timeout_s * _BACKSTOP):
            try:
                return await target.read_load(self._client, timeout_s=self._timeout_s), ""
            except ProviderError as exc:
                return None, str(exc)
            except Exception as exc:  # a bug in an adapter must not stop the poller
                logger.debug("load probe of %s raised", name, exc_info=True)
                return None, f"{type(exc).__name__}: {exc}"
        return None, f"no answer within {self._timeout_s * _BACKSTOP:g}s"

    def _answers_again(self, name: str) -> None:
        """Tell `on_answer_again`; its exceptions are logged and swallowed so polling goes on."""
        if self._on_answer_again is None:
            return
        try:
            self._on_answer_again(name)
        except Exception:
            logger.exception("on_answer_again failed for %s", name)

    def _deliver(self, name: str, load: ServerLoad | None) -> None:
        """Call the sink; its exceptions are logged and swallowed so polling goes on."""
        try:
            self._sink(name, load)
        except Exception:
            logger.exception("load sink failed for %s", name)
