"""How long this process has stood still collecting garbage, so latency samples can leave it out.

A full collection of a large heap stops the interpreter for tens of milliseconds. Every call in
flight then measures that pause as if its backend had been slow, and a latency-ranking policy
(`fastest`) moves traffic off whichever backend carried most of it — in an application whose own
garbage triggers the collections, as much as in the router. The attempt records `paused_s()`
when it starts; the stats store drops a timing that was mostly pause (`MemoryStats.end`).

One `gc.callbacks` hook, installed on import: two `perf_counter()` reads per collection.
"""

from __future__ import annotations

import gc
import time
from typing import Any

_perf = time.perf_counter
_total = 0.0
_began = 0.0


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _total, _began
    if phase == "start":
        _began = _perf()
    else:
        _total += _perf() - _began


def paused_s() -> float:
    """Seconds this process has spent in garbage collection since the hook was installed (a clock:
    take the difference of two readings)."""
    return _total


if _on_collection not in gc.callbacks:
    gc.callbacks.append(_on_collection)

__all__ = ["paused_s"]
