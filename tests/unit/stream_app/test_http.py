"""stream_app.http: a real server on a free loopback port."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.http import MetricsServer
from stream_app.metrics import Metrics


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    srv = MetricsServer(metrics, host="127.0.0.1", port=0)
    srv.start()
    yield srv
    srv.stop()


def test_metrics_endpoint_serves_the_registry(metrics: Metrics, server: MetricsServer) -> None:
    metrics.scores_out("fallback", "fb-1", 9)
    status, ctype, body = get(f"{server.url}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }
    assert samples[("rung_scores_total", (("model_version", "fb-1"), ("tier", "fallback")))] == 9


def test_metrics_endpoint_speaks_openmetrics_when_asked(server: MetricsServer) -> None:
    status, ctype, body = get(f"{server.url}/metrics", accept="application/openmetrics-text")
    assert status == 200
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz_and_readyz(metrics: Metrics, server: MetricsServer) -> None:
    assert get(f"{server.url}/healthz")[0] == 200
    status, _, body = get(f"{server.url}/readyz")
    assert (status, body.strip()) == (503, "no partitions assigned")
    metrics.set_assigned_partitions(2)
    assert get(f"{server.url}/readyz")[0] == 200
    metrics.set_fatal("producer fenced")
    assert get(f"{server.url}/readyz")[:1] == (503,)
    status, _, body = get(f"{server.url}/healthz")
    assert (status, body.strip()) == (503, "fatal: producer fenced")


def test_ready_callback_is_combined(metrics: Metrics) -> None:
    answers = iter([(False, "warming up"), (True, "ok")])
    metrics.set_assigned_partitions(1)
    with MetricsServer(metrics, port=0, ready=lambda: next(answers)) as srv:
        assert get(f"{srv.url}/readyz")[::2] == (503, "warming up\n")
        assert get(f"{srv.url}/readyz")[::2] == (200, "ok\n")


def test_ready_callback_that_raises_means_not_ready(metrics: Metrics) -> None:
    def boom() -> tuple[bool, str]:
        raise RuntimeError("x")

    metrics.set_assigned_partitions(1)
    with MetricsServer(metrics, port=0, ready=boom) as srv:
        assert get(f"{srv.url}/readyz")[::2] == (503, "ready check failed: RuntimeError\n")


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(f"{server.url}/nope")[0] == 404


def test_port_before_start_raises_and_stop_is_idempotent(metrics: Metrics) -> None:
    srv = MetricsServer(metrics, port=0)
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    assert srv.port > 0
    srv.stop()
    srv.stop()
