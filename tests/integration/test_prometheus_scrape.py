"""A real scrape: Prometheus (Debian's /usr/bin/prometheus) scrapes a running worker
every second; a primary-model failure injected at run time must show up as the
fallback share in Prometheus's HTTP API. The same worker must expose every metric
the dashboard and the alert rules query (no dangling queries).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scorers.faults import FaultSwitch, FaultyModel
from stream_app.config import load_settings
from stream_app.devstack.pids import free_port
from stream_app.devstack.produce import produce_events
from stream_app.http import MetricsServer
from stream_app.metrics import Metrics
from topics.catalog import TopicNames
from topics.schemas import Transaction

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# `or vector(0)`: before the first degraded record the numerator has no series at all.
FALLBACK_SHARE = (
    '(sum(rate(rung_scores_total{tier=~"fallback|rules|default"}[5s])) or vector(0))'
    " / sum(rate(rung_scores_total[5s]))"
)


def events(n: int) -> Iterator[Transaction]:
    for i in range(n):
        yield Transaction(
            transaction_id=f"prom-{uuid.uuid4().hex[:8]}-{i}", event_time_s=time.time(),
            customer_id=f"c{i % 50}", terminal_id=f"t{i % 20}", amount=10.0 + i % 300,
            currency="EUR", merchant_category="5411", is_international=False,
            has_international_history=False, account_age_days=400, channel="pos",
        )  # fmt: skip


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(base: str, promql: str, accept: Any, timeout_s: float) -> float:
    end = time.monotonic() + timeout_s
    last: list[dict[str, Any]] = []
    while time.monotonic() < end:
        last = query(base, promql)
        if last and accept(float(last[0]["value"][1])):
            return float(last[0]["value"][1])
        time.sleep(0.5)
    raise AssertionError(f"{promql} never satisfied the condition; last result {last}")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = None
    base = f"http://127.0.0.1:{port}"

    def start(target: str) -> str:
        nonlocal proc
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: rung\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return base
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    yield start
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)
    log.close()


def test_prometheus_sees_the_fallback_share_after_a_primary_failure(
    prometheus: Callable[[str], str], kafka_conf: dict[str, Any], redis_url: str, topic_names: TopicNames,
    prefix: str,
) -> None:
    from scorers.models.defaults import FALLBACK_DIR, PRIMARY_DIR
    from stream_app.live.worker import Worker
    from stream_app.wiring import build_scorer

    for model_dir in (PRIMARY_DIR, FALLBACK_DIR):
        if not (Path(model_dir) / "manifest.json").exists():
            pytest.skip(f"model artifacts not built: {model_dir} (train them first)")
    start_prometheus = prometheus
    settings = load_settings(kafka__bootstrap_servers=kafka_conf["bootstrap.servers"],
                             kafka__group_id=f"{prefix}-group", topics__prefix=prefix,
                             redis__url=redis_url)  # fmt: skip
    metrics = Metrics()
    switch = FaultSwitch()
    scorer = build_scorer(settings, listener=metrics.ladder_listener,
                          primary_wrapper=lambda inner: FaultyModel(inner, switch))  # fmt: skip
    worker = Worker(settings, scorer, metrics=metrics)
    runner = threading.Thread(target=worker.run, name="worker", daemon=True)
    stop_producing = threading.Event()

    def produce() -> None:
        while not stop_producing.is_set():
            produce_events(kafka_conf, topic_names.transactions, events(400), rate_per_s=200,
                           duration_s=2.0, bad_every=50)  # fmt: skip

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    with MetricsServer(metrics, port=0) as server:
        runner.start()
        producer.start()
        try:
            base = start_prometheus(f"127.0.0.1:{server.port}")
            # healthy: scores flow and the primary answers most of them
            wait_for(base, "sum(rung_scores_total)", lambda v: v > 0, timeout_s=90)
            wait_for(base, FALLBACK_SHARE, lambda v: v < 0.5, timeout_s=30)
            switch.set(error=True)
            share = wait_for(base, FALLBACK_SHARE, lambda v: v > 0.9, timeout_s=60)
            assert share <= 1.0
            assert query(base, 'sum(rung_degraded_total{from_tier="primary"})')
            assert_no_dangling_queries(server.url)
        finally:
            switch.clear()
            stop_producing.set()
            worker.stop()
            runner.join(timeout=30)
            producer.join(timeout=30)
            scorer.close()


def assert_no_dangling_queries(worker_url: str) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_dashboard_queries import (
        TARGET_LABELS,
        alert_exprs,
        dashboard_exprs,
        exercise_models,
        exercise_quality,
        exercise_shadow,
        exposed,
        referenced,
    )

    from stream_app.http import MetricsServer
    from stream_app.metrics import Metrics, QualityMetrics
    from stream_app.model_metrics import ModelMetrics
    from stream_app.shadow_metrics import ShadowMetrics

    on_worker = exposed(worker_url)
    # `rung monitor` serves the delayed-label metrics, not the worker; the shadow's,
    # drift's (every 30 s, from 500 rows) and the model registry's series appear only once
    # configured or after their first period, so they come from the exercised classes.
    monitor = Metrics()
    exercise_quality(QualityMetrics(monitor.registry))
    exercise_shadow(ShadowMetrics(monitor.registry))
    exercise_models(ModelMetrics(monitor.registry))
    with MetricsServer(monitor, port=0) as srv:
        on_monitor = {n: ls for n, ls in exposed(srv.url).items() if n not in on_worker}
    for name, labels in referenced(dashboard_exprs() + alert_exprs()).items():
        found = on_worker.get(name, on_monitor.get(name))
        assert found is not None, f"neither a running worker nor the monitor exposes {name}"
        assert not (labels - found - TARGET_LABELS), (name, labels)
