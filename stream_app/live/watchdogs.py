"""The worker's two last resorts: exit for the supervisor when the loop stalls inside a
client call, or when a graceful shutdown overruns its bound. Both `os._exit(EXIT_FATAL)`.

Before the stall watchdog exits it leaves the evidence: every Python thread's stack in
the `worker_stalled` event (`threads`: thread name → frames, innermost last) and the
innermost rung frame of each (`blocked_in`, e.g. `rung-commit_0` →
`stream_app/kafka/commit.py:123 commit`, the client call it waits in), and the same
stacks on stderr through `faulthandler` (which needs no lock, in case logging itself is
what hangs). A native stack inside librdkafka needs `py-spy dump --native --pid <pid>`
while it hangs (docs/reliability.md, "Broker restart")."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

import structlog

from stream_app.kafka.errors import EXIT_FATAL

log = structlog.get_logger(__name__)

STACK_DEPTH = 12  # innermost frames kept per thread in the log event
_OWN_CODE = ("stream_app", "scorers", "topics")


def stalled_for(worker: Any, now_s: float) -> float:
    """Seconds since the loop's last beat, or since a commit on the committer thread
    began, whichever is older while that commit is still running."""
    fut = worker._inflight
    since = worker._beat_s if fut is None or fut.done() else min(
        worker._beat_s, worker._commit_started_s)
    return float(now_s - since)


def _frames(frame: FrameType) -> list[str]:
    return [f"{_short(fs.filename)}:{fs.lineno} {fs.name}"
            for fs in traceback.extract_stack(frame)]


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for i, part in enumerate(parts):
        if part in _OWN_CODE or part in ("confluent_kafka", "redis", "concurrent", "threading.py"):
            return "/".join(parts[i:])
    return "/".join(parts[-2:])


def thread_stacks(frames: dict[int, FrameType] | None = None) -> dict[str, list[str]]:
    """Every thread's stack, outermost first, keyed `name` (`name#ident` if two share a
    name). `frames`: `sys._current_frames()` by default."""
    current = sys._current_frames() if frames is None else frames
    names = {t.ident: t.name for t in threading.enumerate()}
    out: dict[str, list[str]] = {}
    for ident, frame in current.items():
        name = names.get(ident, f"thread-{ident}")
        key = name if name not in out else f"{name}#{ident}"
        out[key] = _frames(frame)
    return out


def blocked_in(stacks: dict[str, list[str]]) -> dict[str, str]:
    """The innermost frame of rung's own code in each thread that has one: the call it
    is waiting in (the frames below it are the client library's)."""
    out = {}
    for name, frames in stacks.items():
        own = [f for f in frames if f.startswith(_OWN_CODE)]
        if own:
            out[name] = own[-1]
    return out


def report_stall(stalled_s: float, limit_s: float, *, stderr: Any = None) -> dict[str, Any]:
    """Log `worker_stalled` with every thread's stack, and dump them to stderr."""
    stacks = thread_stacks()
    event = {"stalled_s": round(stalled_s, 1), "limit_s": limit_s,
             "blocked_in": blocked_in(stacks),
             "threads": {n: f[-STACK_DEPTH:] for n, f in stacks.items()}}
    log.error("worker_stalled", **event)
    try:
        faulthandler.dump_traceback(file=stderr or sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError):  # no usable stderr (a daemonised worker)
        pass
    return event


def start_stall_watchdog(worker: Any) -> None:
    """Exit non-zero when the loop has not come round for `stall_timeout_s`: it is
    blocked inside a client call (seen after a broker restart). The supervisor starts
    a successor, whose `init_transactions` fences this one and aborts its open
    transaction, so nothing half-done becomes visible."""

    def watch() -> None:
        while worker._looping.is_set() and not worker._stop.wait(1.0):
            if worker._notice_signal():
                return
            stalled_s = stalled_for(worker, time.monotonic())
            if stalled_s > worker.stall_timeout_s:
                report_stall(stalled_s, worker.stall_timeout_s)
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
