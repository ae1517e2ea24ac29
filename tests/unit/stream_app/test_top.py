"""`rung top`: rates from two scrapes of a real registry's exposition; one frame with --once."""

from __future__ import annotations

import io

import pytest
from prometheus_client import generate_latest
from rich.console import Console
from typer.testing import CliRunner

from stream_app.http import MetricsServer
from stream_app.metrics import Metrics
from stream_app.ops.top import (
    Scrape,
    app,
    histogram_quantile,
    metrics_url,
    parse_exposition,
    top,
    worker_view,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


def snapshot(m: Metrics, url: str, at_s: float) -> Scrape:
    return Scrape(url, at_s, parse_exposition(generate_latest(m.registry).decode()))


def test_rates_shares_lag_and_breakers_from_two_scrapes() -> None:
    m = Metrics()
    m.records_in("transactions", 1000)
    m.scores_out("primary", "p1", 1000)
    m.set_breaker_state("redis_features", "closed")
    first = snapshot(m, "w1", 10.0)
    m.records_in("transactions", 200)
    m.scores_out("primary", "p1", 150)
    m.scores_out("fallback", "fb1", 50)
    m.dead_lettered("decode", 4)
    m.reviewed(10)
    m.set_consumer_lag("transactions", 0, 30)
    m.set_consumer_lag("transactions", 1, 12)
    m.ladder_listener.on_breaker_transition("redis_features", "closed", "open")
    view = worker_view(first, snapshot(m, "w1", 12.0))
    assert view.in_per_s == pytest.approx(100.0)
    assert view.out_per_s == pytest.approx(100.0)
    assert view.tier_per_s == {"primary": pytest.approx(75.0), "fallback": pytest.approx(25.0)}
    assert view.dead_letter_per_s == pytest.approx(2.0)
    assert view.review_per_s == pytest.approx(5.0)
    assert view.lag_total == 42
    assert view.lag_by_partition[("transactions", "1")] == 12
    assert view.breakers == {"redis_features": "open"}


def test_counter_reset_counts_from_zero() -> None:
    before, after = Metrics(), Metrics()  # a restarted worker starts its counters again
    before.records_in("transactions", 500)
    after.records_in("transactions", 40)
    view = worker_view(snapshot(before, "w", 0.0), snapshot(after, "w", 2.0))
    assert view.in_per_s == pytest.approx(20.0)


def test_latency_quantiles_use_the_new_observations() -> None:
    m = Metrics()
    m.event_to_score_latency([5.0] * 100)  # old, slow observations
    first = snapshot(m, "w", 0.0)
    m.event_to_score_latency([0.015] * 98 + [0.09, 0.09])
    view = worker_view(first, snapshot(m, "w", 1.0))
    assert view.latency_p50_s is not None and 0.01 < view.latency_p50_s <= 0.02
    assert view.latency_p99_s is not None and 0.075 < view.latency_p99_s <= 0.1


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == pytest.approx(0.1)


def test_metrics_url_normalises() -> None:
    assert metrics_url("127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("http://w:1/") == "http://w:1/metrics"
    assert metrics_url("http://w:1/metrics") == "http://w:1/metrics"


def test_once_prints_one_frame_with_a_fake_clock() -> None:
    m = Metrics()
    clock = FakeClock()
    calls: list[str] = []

    def fetch(url: str) -> str:
        calls.append(url)
        if url.startswith("http://down"):
            raise ConnectionRefusedError("refused")
        text = generate_latest(m.registry).decode()
        m.records_in("transactions", 300)
        m.scores_out("rules", "rules-1", 300)
        return text

    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    rc = top(["w1:9464", "http://down:1"], interval_s=3.0, once=True, fetch=fetch,
             clock=clock, sleep=clock.sleep, console=console)  # fmt: skip
    frame = out.getvalue()
    assert rc == 0
    assert calls == ["http://w1:9464/metrics", "http://down:1/metrics"] * 2
    assert "100.0 (100%)" in frame  # rules tier: 300 records in 3 s
    assert "down: ConnectionRefusedError" in frame


def test_live_mode_renders_the_requested_frames() -> None:
    m = Metrics()
    clock = FakeClock()
    out = io.StringIO()
    rc = top(["w1"], interval_s=1.0, fetch=lambda _u: generate_latest(m.registry).decode(),
             clock=clock, sleep=clock.sleep, console=Console(file=out, width=200), frames=3)  # fmt: skip
    assert rc == 0
    assert clock.now_s == 103.0
    assert "rung workers" in out.getvalue()


def test_cli_once_against_a_real_endpoint() -> None:
    m = Metrics()
    m.set_consumer_lag("transactions", 3, 4242)
    m.set_breaker_state("primary_model", "half_open")
    with MetricsServer(m, port=0) as srv:
        result = CliRunner().invoke(app, [srv.url, "--once", "--interval", "0"])
    assert result.exit_code == 0, result.output
    assert "4242" in result.output
    assert "half_open" in result.output
    assert "primary_model" in result.output
