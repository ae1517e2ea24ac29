"""The interleaved shadow benchmark's bookkeeping (`benchmarks.shadow_interleaved`): which
window a record belongs to, the pooled p99 ratio and its interval, and window rates
against their neighbours. No broker: the worker side is a fake."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from benchmarks.shadow_interleaved import (
    latency_by_window,
    latency_goal,
    throughput_by_window,
    toggle_shadow,
    windows,
)


def test_windows_end_where_the_next_begins_and_keep_their_state() -> None:
    toggles = [{"wall": 10.0, "paused": False}, {"wall": 14.0, "paused": True},
               {"wall": 18.0, "paused": False}]
    assert windows(toggles, 20.0) == [(10.0, 14.0, False), (14.0, 18.0, True),
                                      (18.0, 20.0, False)]


def test_pooled_p99_ratio_by_window_leaves_out_each_settling_second() -> None:
    wins = windows([{"wall": 100.0 + 4 * k, "paused": k % 2 == 1} for k in range(10)], 140.0)
    created, lat = [], []
    for start, _, paused in wins:
        for i in range(400):  # one record every 10 ms
            t = start + i * 0.01
            created.append(t * 1000.0)
            settling = t < start + 1.0
            base = 50.0 + (i % 100)  # 50..149 ms: p99 148 (100 records per second)
            lat.append(10_000.0 if settling else base * (1.0 if paused else 1.2))
    out = latency_by_window(created, lat, wins, settle_s=1.0)
    assert out["p99_ratio"] == pytest.approx(1.2, abs=0.01)  # the settling outliers left out
    lo, hi = out["p99_ratio_interval_95"]
    assert lo <= 1.2 <= hi and hi - lo < 0.05
    assert out["pairs"] == 5 and out["on"]["n"] == out["off"]["n"] == 5 * 300
    assert out["pair_p99_ratio_median"] == pytest.approx(1.2, abs=0.01)
    skipped = latency_by_window(created, lat, wins, settle_s=1.0, skip_s=8.0)
    assert skipped["on"]["n"] == 4 * 300 and skipped["off"]["n"] == 4 * 300


def test_records_before_the_first_window_belong_to_none() -> None:
    wins = windows([{"wall": 100.0, "paused": False}, {"wall": 104.0, "paused": True}], 108.0)
    out = latency_by_window([50_000.0] * 200, [1.0] * 200, wins, settle_s=0.0)
    assert out["on"]["n"] == out["off"]["n"] == 0 and out["p99_ratio"] is None


def test_each_on_window_is_compared_with_its_neighbours_so_drift_cancels() -> None:
    toggles, records, t = [], 0, 0.0
    for k in range(12):
        paused = k % 2 == 1
        toggles.append({"t": t, "records": records, "paused": paused})
        rate = (1000.0 + 50.0 * k) * (1.0 if paused else 0.9)  # drifting up 5% a window
        records += int(rate * 2.0)
        t += 2.0
    out = throughput_by_window(toggles, t, records)
    assert out["ratios"] and all(r == pytest.approx(0.9, abs=0.002) for r in out["ratios"])
    assert out["ratio_median"] == pytest.approx(0.9, abs=0.002)
    lo, hi = out["ratio_interval_95"]
    assert lo == pytest.approx(0.9, abs=0.002) and hi == pytest.approx(0.9, abs=0.002)


class FakeShadow:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.resumed = threading.Event()

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")
        self.resumed.set()


def test_toggling_starts_on_and_records_each_window_start() -> None:
    worker: Any = type("W", (), {})()
    worker._shadow, worker.records_committed = FakeShadow(), 7
    stop = threading.Event()
    toggles = toggle_shadow(worker, 3600.0, stop)
    assert worker._shadow.resumed.wait(10.0)
    stop.set()
    assert worker._shadow.calls == ["resume"]
    assert toggles[0]["paused"] is False and toggles[0]["records"] == 7


def test_the_latency_goal_is_shown_only_by_an_interval_inside_it() -> None:
    assert latency_goal({"p99_ratio": 1.03, "p99_ratio_interval_95": [0.98, 1.04]}) == \
        {"p99_ratio_max": pytest.approx(1 / 0.95), "met": True, "shown": True}
    wide = latency_goal({"p99_ratio": 1.03, "p99_ratio_interval_95": [0.95, 3.64]})
    assert wide["met"] and not wide["shown"]
    assert latency_goal({"p99_ratio": 1.39, "p99_ratio_interval_95": [0.95, 3.64]})["met"] is False
    assert latency_goal({}) == {"p99_ratio_max": pytest.approx(1 / 0.95), "met": False,
                                "shown": False}
