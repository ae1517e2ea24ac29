"""The soak benchmark's pure parts (`benchmarks/soak_stats.py`, `benchmarks/soak.py`):
metrics parsing, interval aggregation, lag trend, goals, the cycled pool. No broker."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import generate_latest

from benchmarks.e2e import ScoreWatcher
from benchmarks.soak import PoolCycle, harvest
from benchmarks.soak_stats import (
    Sample,
    WorkerCounters,
    answer_counts,
    intervals,
    lag_growth_s,
    parse_worker_metrics,
    plot_series,
    readback_latencies,
    realistic_max_rate,
    soak_goals,
    stamp_ms_of,
    summarize,
)
from scorers.lab.sim.load import LoadConfig, generate_load
from stream_app.metrics import Metrics, MetricsListener
from topics.codec import decode_transaction


def _counters(primary: float, fallback: float = 0.0, **reasons: float) -> WorkerCounters:
    return WorkerCounters({"primary": primary, "fallback": fallback}, dict(reasons))


def test_parse_worker_metrics_reads_a_real_metrics_page() -> None:
    m = Metrics()
    m.scores_out("primary", "v1", 900)
    m.scores_out("primary", "v2", 90)
    m.scores_out("fallback", "f1", 10)
    MetricsListener(m).on_degraded("primary", "primary_timeout", 7)
    MetricsListener(m).on_degraded("cache", "primary_timeout", 1)
    MetricsListener(m).on_degraded("primary", "primary_features_unavailable", 3)
    m.dead_lettered("decode", 2)
    m.gc_pause(0, 0.002)
    m.gc_pause(2, 0.010)
    c = parse_worker_metrics(generate_latest(m.registry).decode())
    assert c.scores_by_tier == {"primary": 990.0, "fallback": 10.0}
    assert c.scores == 1000.0
    assert c.degraded_by_reason == {"primary_timeout": 8.0, "primary_features_unavailable": 3.0}
    assert c.dead_letters == 2.0
    assert c.gc_pauses == 2.0 and c.gc_pause_s == pytest.approx(0.012)


def test_stamp_in_the_key_gives_the_read_back_latency() -> None:
    assert stamp_ms_of(b"bench-soak-ab12-3-1796136319142-29700") == 1796136319142.0
    assert stamp_ms_of(b"bad-17") is None
    assert stamp_ms_of(b"x-notanumber-3") is None
    seen = {b"soak-p-0-1000-1": 1012.5, b"soak-p-1-2000-1": 2100.0, b"other": 5.0}
    assert sorted(readback_latencies(seen)) == [12.5, 100.0]


def test_harvest_takes_what_was_seen_and_empties_the_table() -> None:
    watcher = SimpleNamespace(seen={b"soak-p-0-1000-1": 1030.0, b"soak-p-0-1000-2": 1050.0})
    lat, keys = harvest(cast(ScoreWatcher, watcher))
    assert sorted(lat.tolist()) == [30.0, 50.0]
    assert sorted(keys.tolist()) == sorted([hash(b"soak-p-0-1000-1"), hash(b"soak-p-0-1000-2")])
    assert watcher.seen == {}
    lat, keys = harvest(cast(ScoreWatcher, watcher))
    assert lat.size == keys.size == 0


def test_intervals_are_deltas_of_the_cumulative_counters() -> None:
    samples = [
        Sample(5.0, 100_000, _counters(1000), [10.0, 20.0], produced=1000),
        Sample(10.0, 101_000, _counters(1990, 10, primary_timeout=10), [30.0], produced=2000),
        Sample(15.0, 102_000, None, [], produced=3000),  # /metrics unreachable once
        Sample(20.0, 103_000, _counters(4000, 10, primary_timeout=10), [40.0], produced=4000),
    ]
    lag = [{"t_s": 4.9, "lag": 50}, {"t_s": 9.0, "lag": 70}, {"t_s": 12.0, "error": "x"},
           {"t_s": 19.0, "lag": 20}]
    rows = intervals(samples, lag)
    assert [r["lag"] for r in rows] == [50, 70, 70, 20]
    assert rows[0]["scored"] == 1000 and rows[0]["primary_share"] == 1.0
    assert rows[1]["scored"] == 1000 and rows[1]["primary_share"] == pytest.approx(0.99)
    assert rows[1]["degraded"] == {"primary_timeout": 10.0}
    assert rows[1]["scored_per_s"] == pytest.approx(200.0)
    assert "scored" not in rows[2]  # no counters: no made-up delta
    assert rows[3]["scored"] == 2010 and rows[3]["degraded"] == {}  # over the gap, from t=10
    assert rows[3]["primary_share"] == 1.0
    assert [r["produced_per_s"] for r in rows] == [200.0] * 4
    assert rows[0]["readback"]["n"] == 2 and rows[0]["readback"]["p50_ms"] == 15.0
    assert math.isnan(rows[2]["readback"]["p99_ms"])


def test_lag_growth_is_near_zero_when_bounded_and_counts_seconds_when_growing() -> None:
    bounded = [{"t_s": float(t), "lag": 500 + (100 if t % 10 else -100)} for t in range(0, 600, 5)]
    slope, growth = lag_growth_s(bounded, 595.0, 1000.0)
    assert slope is not None and abs(slope) < 1.0
    assert growth is not None and abs(growth) < 0.5
    growing = [{"t_s": float(t), "lag": 20 * t} for t in range(0, 600, 5)]
    slope, growth = lag_growth_s(growing, 595.0, 1000.0)
    assert slope == pytest.approx(20.0)
    assert growth == pytest.approx(20.0 * 297.5 / 1000.0)  # 6 s of input over the last half
    assert lag_growth_s([{"t_s": 1.0, "lag": 3}], 10.0, 1000.0) == (None, None)


def test_lag_trend_ends_with_the_load_not_with_the_drain() -> None:
    # lag flat at 100,000 while loading (the worker behind but not falling further
    # behind), then drained to zero in 20 s after the load stopped at t = 100
    lag = [{"t_s": float(t), "lag": 100_000 if t <= 100 else 100_000 - 5_000 * (t - 100)}
           for t in range(5, 125, 5)]
    samples = [Sample(x["t_s"], 1, _counters(1), [1.0]) for x in lag]
    whole = summarize(samples, lag, warm_up_s=10.0, rate_per_s=1000.0, produced=24)
    assert whole["lag_slope_last_half_per_s"] < -1000  # the drain reads as "shrinking"
    load = summarize(samples, lag, warm_up_s=10.0, rate_per_s=1000.0, produced=24,
                     load_end_s=100.0)
    assert load["lag_slope_last_half_per_s"] == pytest.approx(0.0)
    assert load["lag_trend_window_s"] == [50.0, 100.0]
    assert load["max_lag_after_warm_up"] == 100_000


def _run(rss_end: int, fallback_late: float, p99_spike_ms: float) -> dict[str, Any]:
    """A synthetic 2-minute run: 1,000 records per 10 s interval, warm-up 30 s."""
    samples = []
    for i in range(1, 13):
        t = 10.0 * i
        rss = 200_000 if t < 30 else 210_000 + (rss_end - 210_000) * (t - 30) / 90
        lat = np.full(1000, 20.0)
        if i == 8:
            lat[-20:] = p99_spike_ms
        fallback = fallback_late * max(0, i - 5)  # cumulative: from the 6th interval on
        samples.append(Sample(t, int(rss), _counters(1000 * i - fallback, fallback),
                              lat, produced=1000 * i,
                              answered_keys=np.arange(1000 * (i - 1), 1000 * i)))
    lag = [{"t_s": 10.0 * i, "lag": 300} for i in range(1, 13)]
    return summarize(samples, lag, warm_up_s=30.0, rate_per_s=100.0, produced=12_000)


def test_summary_and_goals_pass_on_a_flat_run() -> None:
    s = _run(rss_end=215_000, fallback_late=0.0, p99_spike_ms=20.0)
    assert s["start_rss_kib"] == 210_000 and s["end_rss_kib"] == 215_000
    assert s["rss_growth_ratio"] == pytest.approx(5_000 / 210_000)
    assert s["peak_rss_kib"] == 215_000
    assert s["lag_slope_last_half_per_s"] == pytest.approx(0.0)
    assert s["max_lag_after_warm_up"] == 300
    assert s["primary_share"] == 1.0 and s["primary_share_after_warm_up"] == 1.0
    assert s["readback"]["n"] == 12_000 and s["answered_share"] == 1.0
    assert s["duplicates_visible"] == 0 and s["missing_visible"] == 0
    assert s["worker_scored_minus_produced"] == 0
    assert len(s["intervals"]) == 12
    goals = {g.name: g for g in soak_goals(s, deadline_s=0.1)}
    assert all(g.met for g in goals.values()), [g for g in goals.values() if not g.met]
    json.dumps(s)  # the document stays serialisable


def test_goals_fail_on_growth_degradation_and_a_slow_interval() -> None:
    s = _run(rss_end=260_000, fallback_late=5.0, p99_spike_ms=500.0)
    goals = {g.name: g for g in soak_goals(s, deadline_s=0.1)}
    assert goals["soak: RSS growth (end/start - 1)"].met is False
    assert goals["soak: primary share overall"].met is False
    assert s["primary_share"] == pytest.approx(1 - 35 / 12_000)
    assert s["primary_share_after_warm_up"] < s["primary_share"]
    assert goals["soak: worst interval read-back p99 ms"].met is False
    assert s["readback_worst_interval_p99_ms"] == pytest.approx(500.0)
    assert goals["soak: answered / produced"].met is True
    missing = summarize([Sample(10.0, 1, _counters(5), [1.0], answered_keys=[7])], [],
                        warm_up_s=0.0, rate_per_s=1.0, produced=2)
    assert {g.name: g for g in soak_goals(missing, 0.1)}["soak: answered / produced"].met is False
    assert missing["missing_visible"] == 1 and missing["worker_scored_minus_produced"] == 3


def test_a_score_seen_again_in_a_later_interval_is_a_duplicate() -> None:
    counts = answer_counts([np.array([1, 2, 3]), [4, 2], []], produced=4, worker_scored=5.0)
    assert counts["answered_visible"] == 4 and counts["answered_share"] == 1.0
    assert counts["duplicates_visible"] == 1 and counts["missing_visible"] == 0
    assert counts["worker_scored_minus_produced"] == 1.0
    goals = {g.name: g for g in soak_goals(counts, 0.1)}
    assert goals["soak: duplicate scores seen"].met is False
    nothing = answer_counts([], produced=0, worker_scored=None)
    assert nothing["answered_share"] is None and nothing["duplicates_visible"] is None


def test_goals_are_unmeasured_without_samples() -> None:
    s = summarize([], [], warm_up_s=30.0, rate_per_s=100.0, produced=0)
    assert all(g.met is None for g in soak_goals(s, 0.1))


def test_realistic_max_rate_takes_the_newest_bench_that_measured_it(tmp_path: Path) -> None:
    def bench(name: str, rate: float | None) -> None:
        real = {"throughput": {"healthy": {"records_per_s": rate}}} if rate else {"error": "x"}
        (tmp_path / name).write_text(json.dumps({"results": {"realistic": real}}))

    assert realistic_max_rate(tmp_path) is None
    bench("bench-20261127T110713Z.json", 9000.0)
    bench("bench-20261201T134501Z.json", 12000.0)
    bench("bench-20261202T000000Z.json", None)  # newer, but no realistic figure
    bench("bench-latest.json", 99999.0)
    (tmp_path / "bench-20261203T000000Z.json").write_text("{not json")
    found = realistic_max_rate(tmp_path)
    assert found is not None
    assert found == (12000.0, tmp_path / "bench-20261201T134501Z.json")


def test_pool_cycle_fresh_ids_and_stamps_same_population_each_lap() -> None:
    pool = generate_load(500, LoadConfig(n_customers=2000, n_terminals=300), seed=3).live
    cycle = PoolCycle(pool, "bench-soak-ab12", seed=5)
    keys: list[bytes] = []
    customers: list[Counter[str]] = [Counter(), Counter()]
    for i in range(10):  # 10 x 100 records: two laps of 500
        k, v = cycle.take(100, 1_800_000_000.0 + i)
        assert len(k) == len(v) == 100
        for key, value in zip(k, v, strict=True):
            tx = decode_transaction(value)
            assert tx.transaction_id == key.decode()
            assert tx.event_time_s == 1_800_000_000.0 + i
            assert stamp_ms_of(key) == (1_800_000_000.0 + i) * 1000.0
            customers[len(keys) // 500][tx.customer_id or ""] += 1
            keys.append(key)
    assert len(set(keys)) == 1000  # fresh ids on the second lap
    assert customers[0] == customers[1]  # the same events, in another order
    assert cycle.lap == 1
    k, _ = cycle.take(600, 1_800_000_100.0)  # one take across a lap boundary
    assert len(k) == 600 and len(set(k)) == 600 and cycle.lap == 3
    with pytest.raises(ValueError):
        PoolCycle(pool.take(np.arange(0)), "x")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    s = _run(rss_end=215_000, fallback_late=1.0, p99_spike_ms=80.0)
    s["intervals"][3]["lag"] = None  # a missing point is a gap, not a crash
    path = plot_series(s["intervals"], tmp_path / "img" / "soak.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
