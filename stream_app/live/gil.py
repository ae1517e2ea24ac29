"""The worker's threads and the GIL.

A worker process runs several Python threads beside its loop: the committer, the
label feed, the shadow feeder, the metrics HTTP server, the watchers. Only one holds
the GIL at a time. A thread blocked in a socket read (the loop waiting for its
feature fetch's reply) needs the GIL back for every chunk it reads, and when another
thread is busy in Python it gets it only when that thread is asked to let go, after
`sys.getswitchinterval()` — 5 ms by default. A feature fetch gives the GIL up dozens of
times (socket reads, numpy), so one busy background thread turns a 4 ms fetch into a
long one (CPython's "convoy effect"). Measured (`python -m benchmarks.gil`, the real
`RedisFeatureStore.fetch` of 512-event batches against redis-server, beside a thread
decoding label records as the label feed does with a backlog): p50 3.9 ms alone;
beside the busy thread p50 212 ms at 5 ms, 47 ms at 1 ms, 27 ms at 0.5 ms, 17 ms at
0.25 ms. The feature budget is 40 ms, so at the default a background burst (a label
backlog after a restart, a Prometheus scrape, the committer producing a batch) sends
whole healthy batches to the fallback.

Two remedies, both here:

- `set_switch_interval`: the worker asks for a shorter interval
  (`RUNG_PROCESS__GIL_SWITCH_INTERVAL_S`, default 0.5 ms), so the loop waits at most
  that long per chunk. A switch is only forced when two threads want the GIL; the
  cost is a little more switching under contention (`benchmarks/gil.py` measures it).
- `Pacer`: a background thread whose work can wait (the label feed) keeps its CPU
  time under a share of its wall time (`RUNG_PROCESS__LABEL_FEED_BUSY_SHARE`), pausing
  after each step in proportion to what the step cost, so a backlog is worked off in
  the gaps between batches instead of in one stretch beside them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)

CPYTHON_DEFAULT_S: Final = 0.005
MAX_PAUSE_S: Final = 1.0

__all__ = ["CPYTHON_DEFAULT_S", "MAX_PAUSE_S", "Pacer", "set_switch_interval"]


def set_switch_interval(seconds: float) -> float:
    """Set the interpreter's GIL switch interval; returns the previous one."""
    if not seconds > 0:
        raise ValueError(f"switch interval must be positive, not {seconds!r}")
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    log.info("gil_switch_interval", seconds=sys.getswitchinterval(), before=before)
    return before


class Pacer:
    """Keeps one thread's CPU time to about `share` of its wall time.

    `start()` before a step, `pause_s()` after it: the pause that makes the step's CPU
    time `share` of step plus pause (capped at `max_pause_s`; 0 when `share` is 1).
    `cpu_clock` is the calling thread's CPU clock (`time.thread_time`): time spent
    blocked (a poll waiting for records) is not charged.
    """

    def __init__(self, share: float, cpu_clock: Callable[[], float] = time.thread_time,
                 max_pause_s: float = MAX_PAUSE_S) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"busy share must be in (0, 1], not {share!r}")
        self.share = share
        self._cpu_clock = cpu_clock
        self._max_pause_s = max_pause_s
        self._started = 0.0
        self.paused_s = 0.0  # total so far

    def start(self) -> None:
        self._started = self._cpu_clock()

    def pause_s(self) -> float:
        if self.share >= 1.0:
            return 0.0
        busy = max(0.0, self._cpu_clock() - self._started)
        pause = min(self._max_pause_s, busy * (1.0 / self.share - 1.0))
        self.paused_s += pause
        return pause
