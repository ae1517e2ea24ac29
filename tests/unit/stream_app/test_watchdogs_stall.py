"""The stall watchdog's evidence: how long the loop has been stuck, every thread's stack,
and the rung frame each thread waits in (no broker, no sleeping)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import structlog

from stream_app.live import watchdogs


def _worker(beat_s: float, commit_started_s: float, inflight: Future[None] | None) -> object:
    return SimpleNamespace(_beat_s=beat_s, _commit_started_s=commit_started_s,
                           _inflight=inflight)


def test_stalled_for_counts_from_the_loop_beat_when_no_commit_runs() -> None:
    assert watchdogs.stalled_for(_worker(100.0, 50.0, None), 130.0) == 30.0
    done: Future[None] = Future()
    done.set_result(None)
    assert watchdogs.stalled_for(_worker(100.0, 50.0, done), 130.0) == 30.0


def test_stalled_for_counts_from_a_commit_still_running() -> None:
    running: Future[None] = Future()
    assert watchdogs.stalled_for(_worker(100.0, 50.0, running), 130.0) == 80.0
    # a loop that stopped beating before the commit began is older still
    assert watchdogs.stalled_for(_worker(40.0, 50.0, running), 130.0) == 90.0


def test_blocked_in_names_the_innermost_rung_frame() -> None:
    stacks = {
        "rung-commit_0": ["threading.py:982 run",
                          "stream_app/live/worker.py:453 _commit",
                          "stream_app/kafka/commit.py:171 _retrying",
                          "stream_app/kafka/commit.py:109 <lambda>"],
        "MainThread": ["stream_app/live/worker.py:472 _settle",
                       "concurrent/futures/_base.py:451 result", "threading.py:327 wait"],
        "other": ["threading.py:982 run", "queue.py:180 get"],
    }
    assert watchdogs.blocked_in(stacks) == {
        "rung-commit_0": "stream_app/kafka/commit.py:109 <lambda>",
        "MainThread": "stream_app/live/worker.py:472 _settle"}


def test_thread_stacks_show_a_waiting_thread_by_name() -> None:
    entered, gate = threading.Event(), threading.Event()

    def park_here() -> None:
        entered.set()
        gate.wait(60)

    t = threading.Thread(target=park_here, name="parked-for-test", daemon=True)
    t.start()
    try:
        assert entered.wait(10)
        stacks = watchdogs.thread_stacks()
    finally:
        gate.set()
        t.join(10)
    frames = stacks["parked-for-test"]
    assert any(f.endswith(" park_here") for f in frames), frames
    assert frames[0].startswith("threading.py"), frames  # outermost first
    assert any("test_thread_stacks_show_a_waiting_thread_by_name" in f
               for f in stacks["MainThread"])


def test_report_stall_logs_stacks_and_dumps_every_thread(tmp_path: Path) -> None:
    dump = tmp_path / "stderr.txt"
    with dump.open("w") as fh, structlog.testing.capture_logs() as logs:
        event = watchdogs.report_stall(41.5, 40.0, stderr=fh)
    [logged] = [e for e in logs if e["event"] == "worker_stalled"]
    assert logged["stalled_s"] == 41.5 and logged["limit_s"] == 40.0
    assert logged["threads"] == event["threads"] and "MainThread" in logged["threads"]
    assert all(len(frames) <= watchdogs.STACK_DEPTH for frames in logged["threads"].values())
    assert logged["blocked_in"]["MainThread"].startswith("stream_app/live/watchdogs.py")
    text = dump.read_text()
    assert "Current thread" in text and "report_stall" in text
