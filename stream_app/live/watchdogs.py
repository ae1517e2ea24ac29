"""The worker's two last resorts: exit for the supervisor when the loop stalls inside a
client call, or when a graceful shutdown overruns its bound. Both `os._exit(EXIT_FATAL)`."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog

from stream_app.kafka.errors import EXIT_FATAL

log = structlog.get_logger(__name__)


def start_stall_watchdog(worker: Any) -> None:
    """Exit non-zero when the loop has not come round for `stall_timeout_s`: it is
    blocked inside a client call (seen after a broker restart). The supervisor starts
    a successor, whose `init_transactions` fences this one and aborts its open
    transaction, so nothing half-done becomes visible."""

    def watch() -> None:
        while worker._looping.is_set() and not worker._stop.wait(1.0):
            if worker._notice_signal():
                return
            # the loop's last beat, or a commit on the committer thread stuck as long
            fut = worker._inflight
            since = worker._beat_s if fut is None or fut.done() else min(
                worker._beat_s, worker._commit_started_s)
            stalled_s = time.monotonic() - since
            if stalled_s > worker.stall_timeout_s:
                log.error("worker_stalled", stalled_s=round(stalled_s, 1),
                          limit_s=worker.stall_timeout_s)
                os._exit(EXIT_FATAL)

    threading.Thread(target=watch, name="rung-stall-watchdog", daemon=True).start()


def start_shutdown_watchdog(timeout_s: float) -> None:
    """Hard-exit if graceful shutdown overruns its bound (an open transaction is
    aborted by the broker; nothing half-done becomes visible)."""

    def bite() -> None:
        log.error("shutdown_timeout", timeout_s=timeout_s)
        os._exit(EXIT_FATAL)

    timer = threading.Timer(timeout_s, bite)
    timer.daemon = True
    timer.start()
