"""The worker's heap and Python's cyclic garbage collector.

A full (generation 2) collection walks every tracked object in the process. A
worker holds ~225,000 of them after start-up (torch, numpy, pydantic, the models),
and one full pass over them took 50-60 ms on the 2-core CI machine (`gc.collect()`
after `build_scorer`, measured) — longer than the 40 ms feature-fetch budget and
half the 100 ms batch deadline. When such a pass lands inside a feature fetch or a
forward, a whole batch falls to the fallback in a perfectly healthy system.

`settle_heap()` runs once after the ladder is built and warmed, before the worker
subscribes: it collects what start-up left behind and freezes the rest
(`gc.freeze()`, moved to the permanent generation: never scanned again, never
freed — it lives as long as the process anyway). Later passes walk only what was
allocated since. `GcPauses` times every collection (`gc.callbacks`) so the pauses
that remain are visible (`rung_gc_pause_seconds{generation}`, and a log line for
any pass over `LOG_PAUSE_S`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)

LOG_PAUSE_S: Final = 0.02

__all__ = ["GcPauses", "LOG_PAUSE_S", "settle_heap"]


def settle_heap() -> int:
    """Collect, then freeze everything alive; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap_settled", frozen_objects=frozen)
    return frozen


class GcPauses:
    """Times each collection of the cyclic GC and hands it to `observe(gen, seconds)`."""

    def __init__(self, observe: Callable[[int, float], None],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._observe = observe
        self._clock = clock
        self._started = 0.0
        self.longest_s = 0.0
        self.collections = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        seconds = self._clock() - self._started
        gen = int(info.get("generation", -1))
        self.collections += 1
        self.longest_s = max(self.longest_s, seconds)
        self._observe(gen, seconds)
        if seconds >= LOG_PAUSE_S:
            log.info("gc_pause", generation=gen, ms=round(seconds * 1000, 1),
                     collected=info.get("collected"))

    def start(self) -> GcPauses:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
